//! Compiles the protobuf contracts with protox (pure Rust: no `protoc` needed), writes the
//! file descriptor set that server reflection serves, and generates, per package, the walk over
//! every message's strings (`<package>.text.rs`, see `src/text.rs`).

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::PathBuf;

use heck::{ToSnakeCase, ToUpperCamelCase};
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorSet};

const PROTOS: &[&str] = &[
    "engarde/workflow/v1/workflow_service.proto",
    "engarde/agent/v1/agent_service.proto",
    "engarde/agent/v1/execution_service.proto",
    "engarde/agent/v1/run_service.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let protos: Vec<&str> = PROTOS.iter().copied().filter(|p| std::path::Path::new("proto").join(p).exists()).collect();
    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler.include_source_info(true).include_imports(true).open_files(&protos)?;
    let fds = compiler.file_descriptor_set();
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    // compile_fds does not write the descriptor set itself: reflection needs it, so write it here.
    // Encoded by protox, not re-encoded from prost_types: prost_types drops the extension options
    // (google.api.http) that the HTTP/JSON transcoding (src/kit/http_json) reads from this set.
    std::fs::write(out.join("engarde_descriptor.bin"), compiler.encode_file_descriptor_set())?;
    // The same set without source info (the comments: 70 % of its bytes), for the HTTP/JSON
    // transcoder, which keeps its descriptors in memory for the process's life and shows no
    // comments but in the OpenAPI document it makes once at start from the full set.
    let mut lean = protox::Compiler::new(["proto"])?;
    lean.include_source_info(false).include_imports(true).open_files(&protos)?;
    std::fs::write(out.join("engarde_descriptor_lean.bin"), lean.encode_file_descriptor_set())?;
    for (package, code) in text_walks(&fds) {
        std::fs::write(out.join(format!("{package}.text.rs")), code)?;
    }
    // Maps as BTreeMap: encoding is then deterministic, so the fingerprint of a request (the hash
    // of its encoding, for idempotency keys) is the same every time the same request is sent.
    // Our codec (src/codec.rs): a request that does not decode is INVALID_ARGUMENT, not INTERNAL,
    // and every request passes the receipt check of src/text.rs.
    tonic_prost_build::configure().btree_map(".").codec_path("crate::codec::CheckedCodec").compile_fds(fds)?;
    Ok(())
}

/// Rust identifiers as prost-build spells them.
fn field_ident(name: &str) -> String {
    let snake = name.to_snake_case();
    match snake.as_str() {
        "self" | "super" | "crate" | "extern" => format!("{snake}_"),
        "as" | "break" | "const" | "continue" | "else" | "enum" | "false" | "fn" | "for" | "if" | "impl" | "in"
        | "let" | "loop" | "match" | "mod" | "move" | "mut" | "pub" | "ref" | "return" | "static" | "struct"
        | "trait" | "true" | "type" | "unsafe" | "use" | "where" | "while" | "abstract" | "become" | "box" | "do"
        | "final" | "macro" | "override" | "priv" | "typeof" | "unsized" | "virtual" | "yield" | "async" | "await"
        | "dyn" | "try" | "gen" => format!("r#{snake}"),
        _ => snake,
    }
}

fn type_ident(name: &str) -> String {
    name.to_upper_camel_case()
}

/// The `TextFields` and `CheckOnReceipt` impls of every message of the `engarde.*` packages.
fn text_walks(fds: &FileDescriptorSet) -> Vec<(String, String)> {
    let requests: HashSet<String> = fds
        .file
        .iter()
        .flat_map(|f| f.service.iter())
        .flat_map(|s| s.method.iter())
        .map(|m| m.input_type().trim_start_matches('.').to_owned())
        .collect();
    let mut out: Vec<(String, String)> = Vec::new();
    for file in fds.file.iter().filter(|f| f.package().starts_with("engarde.")) {
        let package = file.package().to_owned();
        let mut code = String::new();
        for message in &file.message_type {
            let only_map_entries =
                message.nested_type.iter().all(|n| n.options.as_ref().is_some_and(|o| o.map_entry()));
            assert!(only_map_entries && message.enum_type.is_empty(), "nested types: extend build.rs");
            let full_name = format!("{package}.{}", message.name());
            walk_message(&mut code, message, requests.contains(&full_name), |type_name| {
                fds.file
                    .iter()
                    .flat_map(|f| f.message_type.iter().map(move |m| (format!(".{}.{}", f.package(), m.name()), m)))
                    .find(|(name, _)| name == type_name)
                    .map(|(_, m)| m.clone())
            });
        }
        match out.iter_mut().find(|(p, _)| *p == package) {
            Some((_, existing)) => existing.push_str(&code),
            None => out.push((package, code)),
        }
    }
    out
}

/// One message's impls. `find` answers top-level messages by their full name; map entries are
/// nested types of their message, found there.
fn walk_message(
    code: &mut String,
    message: &DescriptorProto,
    is_request: bool,
    find: impl Fn(&str) -> Option<DescriptorProto>,
) {
    let name = type_ident(message.name());
    let mut body = String::new();
    let mut oneofs: Vec<(usize, Vec<&FieldDescriptorProto>)> = Vec::new();
    for field in &message.field {
        let ident = field_ident(field.name());
        let proto_name = field.name();
        if let Some(index) = field.oneof_index.filter(|_| !field.proto3_optional()) {
            let index = index as usize;
            match oneofs.iter_mut().find(|(i, _)| *i == index) {
                Some((_, fields)) => fields.push(field),
                None => oneofs.push((index, vec![field])),
            }
            continue;
        }
        let path = format!("crate::text::FieldPath::Field(at, {proto_name:?})");
        let repeated = field.label() == Label::Repeated;
        match field.r#type() {
            Type::String if field.proto3_optional() => {
                writeln!(body, "        if let Some(v) = &self.{ident} {{ visit(&{path}, v); }}").unwrap();
            }
            Type::String if repeated => writeln!(
                body,
                "        {{ let f = {path}; for (i, v) in self.{ident}.iter().enumerate() \
                 {{ visit(&crate::text::FieldPath::Index(&f, i), v); }} }}"
            )
            .unwrap(),
            Type::String => writeln!(body, "        visit(&{path}, &self.{ident});").unwrap(),
            Type::Message if repeated && find(field.type_name()).is_none() => {
                // A map: its entry is a nested type of this message.
                let entry_name = field.type_name().rsplit('.').next().unwrap_or_default();
                let entry = message
                    .nested_type
                    .iter()
                    .find(|n| n.name() == entry_name)
                    .unwrap_or_else(|| panic!("map entry {entry_name} of {}", message.name()));
                let (key, value) = (&entry.field[0], &entry.field[1]);
                assert_eq!(key.r#type(), Type::String, "maps with non-string keys: extend build.rs");
                let value_visit = match value.r#type() {
                    Type::String => "visit(&crate::text::FieldPath::Key(&f, k), v);",
                    Type::Message => "v.visit_text(&crate::text::FieldPath::Key(&f, k), visit);",
                    _ => "let _ = v;",
                };
                writeln!(
                    body,
                    "        {{ let f = {path}; for (k, v) in &self.{ident} {{ visit(&f, k); {value_visit} }} }}"
                )
                .unwrap();
            }
            Type::Message if repeated => writeln!(
                body,
                "        {{ let f = {path}; for (i, v) in self.{ident}.iter().enumerate() \
                 {{ v.visit_text(&crate::text::FieldPath::Index(&f, i), visit); }} }}"
            )
            .unwrap(),
            Type::Message => {
                writeln!(body, "        if let Some(v) = &self.{ident} {{ v.visit_text(&{path}, visit); }}").unwrap()
            }
            _ => {}
        }
    }
    for (index, fields) in oneofs {
        let oneof = &message.oneof_decl[index];
        let oneof_field = field_ident(oneof.name());
        let enum_path = format!("{}::{}", message.name().to_snake_case(), type_ident(oneof.name()));
        let mut arms = String::new();
        for field in fields {
            let variant = type_ident(field.name());
            let path = format!("crate::text::FieldPath::Field(at, {:?})", field.name());
            match field.r#type() {
                Type::String => {
                    writeln!(arms, "                {enum_path}::{variant}(v) => visit(&{path}, v),").unwrap()
                }
                Type::Message => {
                    writeln!(arms, "                {enum_path}::{variant}(v) => v.visit_text(&{path}, visit),")
                        .unwrap()
                }
                _ => {}
            }
        }
        writeln!(
            body,
            "        if let Some(o) = &self.{oneof_field} {{\n            #[allow(unreachable_patterns)]\n            \
             match o {{\n{arms}                _ => {{}}\n            }}\n        }}"
        )
        .unwrap();
    }
    writeln!(
        code,
        "impl crate::text::TextFields for {name} {{\n    #[allow(unused_variables)]\n    fn visit_text(&self, at: &crate::text::FieldPath<'_>, \
         visit: &mut dyn FnMut(&crate::text::FieldPath<'_>, &str)) {{\n{body}    }}\n}}\n"
    )
    .unwrap();
    let check = if is_request { "crate::text::nul_violations(self)" } else { "Vec::new()" };
    writeln!(
        code,
        "impl crate::text::CheckOnReceipt for {name} {{\n    fn violations(&self) -> Vec<(String, String)> {{ {check} }}\n}}\n"
    )
    .unwrap();
}
