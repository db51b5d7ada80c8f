//! The build script of both services (each Cargo.toml names it), for their links on GNU/Linux:
//!
//! - **Packed relative relocations (DT_RELR).** The dynamic loader reads every relocation of a
//!   position-independent executable at start-up, and packed they take a few KB instead of over
//!   a megabyte of pages that then stay resident for the process's life. Needs a linker that
//!   knows `-z pack-relative-relocs` (GNU ld ≥ 2.38, lld) and glibc ≥ 2.36 to run (Debian 12,
//!   the image's builder and runtime); the loader refuses an older glibc by name
//!   (GLIBC_ABI_DT_RELR).
//! - **The functions start-up and idle run, first** (release builds on x86_64, whose default
//!   linker is rustc's own lld): `build/order/<service>.txt`, written by
//!   `scripts/order-symbols`, is given to lld's `--symbol-ordering-file`, so that what a service
//!   keeps resident is a few contiguous MB of `.text` rather than pages all over it. Names that
//!   no longer exist are skipped without a word (the order is then merely less complete).
//!   `ENGARDE_SYMBOL_ORDER=off` leaves it out, e.g. for a linker other than lld.
use std::env;
use std::path::Path;

fn main() {
    println!("cargo::rerun-if-changed=../build/services.rs");
    println!("cargo::rerun-if-env-changed=ENGARDE_SYMBOL_ORDER");
    let target = |key: &str, value: &str| env::var(key).is_ok_and(|v| v == value);
    if !(target("CARGO_CFG_TARGET_OS", "linux") && target("CARGO_CFG_TARGET_ENV", "gnu")) {
        return;
    }
    println!("cargo::rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");

    let ordered = target("CARGO_CFG_TARGET_ARCH", "x86_64")
        && target("PROFILE", "release")
        && !target("ENGARDE_SYMBOL_ORDER", "off");
    let (Ok(manifest_dir), Ok(package)) = (env::var("CARGO_MANIFEST_DIR"), env::var("CARGO_PKG_NAME")) else {
        return;
    };
    let order = Path::new(&manifest_dir).join("../build/order").join(format!("{package}.txt"));
    println!("cargo::rerun-if-changed={}", order.display());
    if ordered && order.is_file() {
        println!("cargo::rustc-link-arg-bins=-Wl,--symbol-ordering-file={}", order.display());
        println!("cargo::rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}
