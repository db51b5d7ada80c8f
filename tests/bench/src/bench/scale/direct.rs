//! The baseline of each read: the statements the service sends, with the same parameters of the
//! same types, run directly with psql on the same data. Each is `PREPARE`d once and `EXECUTE`d
//! again and again, as sqlx prepares a statement once per connection (so PostgreSQL's choice
//! between custom and generic plans is the same), and timed with `\timing`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::bench::stats::{Samples, Summary};

/// Calls run before those measured.
const WARM_UP: usize = 20;

/// A parameter: its type as the service binds it, and its value (`None`: NULL).
#[derive(Debug, Clone)]
pub struct Param {
    ty: &'static str,
    value: Option<String>,
}

impl Param {
    pub fn text(value: impl Into<String>) -> Self {
        Self { ty: "text", value: Some(value.into()) }
    }
    pub fn uuid(value: impl ToString) -> Self {
        Self { ty: "uuid", value: Some(value.to_string()) }
    }
    pub fn int(value: i64) -> Self {
        Self { ty: "int8", value: Some(value.to_string()) }
    }
    pub fn time(value: &str) -> Self {
        Self { ty: "timestamptz", value: Some(value.to_owned()) }
    }
    pub fn null(ty: &'static str) -> Self {
        Self { ty, value: None }
    }

    fn literal(&self) -> String {
        match &self.value {
            Some(v) => format!("'{}'", v.replace('\'', "''")),
            None => "NULL".to_owned(),
        }
    }
}

/// The statements of one call, as the service's storage code writes them (`$n` parameters).
pub type Statements = Vec<(String, Vec<Param>)>;

/// psql's script: every statement prepared, then `calls` rounds of executing each in turn.
fn script(statements: &Statements, calls: usize) -> String {
    let mut text = String::from("\\set ON_ERROR_STOP on\n");
    for (s, (sql, params)) in statements.iter().enumerate() {
        let types = params.iter().map(|p| p.ty).collect::<Vec<_>>().join(", ");
        let sql = sql.split_whitespace().collect::<Vec<_>>().join(" ");
        // PostgreSQL takes no empty parentheses after a statement without parameters.
        let types = if types.is_empty() { types } else { format!("({types})") };
        text.push_str(&format!("PREPARE s{s}{types} AS {sql};\n"));
    }
    text.push_str("\\timing on\n");
    for _ in 0..calls {
        for (s, (_, params)) in statements.iter().enumerate() {
            let args = params.iter().map(Param::literal).collect::<Vec<_>>().join(", ");
            let args = if args.is_empty() { args } else { format!("({args})") };
            text.push_str(&format!("EXECUTE s{s}{args};\n"));
        }
    }
    text
}

/// The `Time: N ms` lines of psql's output, in order.
fn timings(output: &str) -> anyhow::Result<Vec<Duration>> {
    output
        .lines()
        .filter_map(|l| l.strip_prefix("Time: "))
        .map(|rest| {
            let ms: f64 = rest.split_whitespace().next().and_then(|n| n.parse().ok()).context("psql's Time: line")?;
            Ok(Duration::from_secs_f64(ms / 1000.0))
        })
        .collect()
}

/// Runs `statements` `calls` times (after [`WARM_UP`] more) on one psql connection and answers
/// each call's time (the sum of its statements').
pub fn run(database_url: &str, statements: &Statements, calls: usize, dir: &Path) -> anyhow::Result<Summary> {
    let text = script(statements, WARM_UP + calls);
    let first = statements.first().map_or("", |(sql, _)| sql.as_str());
    let times = psql(database_url, &text, dir, first)?;
    if times.len() != (WARM_UP + calls) * statements.len() {
        bail!("psql timed {} statements of {} for {first:?}…", times.len(), (WARM_UP + calls) * statements.len());
    }
    let mut samples = Samples::default();
    for call in times.chunks(statements.len().max(1)).skip(WARM_UP) {
        samples.record(call.iter().sum());
    }
    Ok(samples.summarize(Duration::ZERO))
}

/// Runs `statements` (plain SQL, no parameters) once, in order, on one psql connection, and
/// answers each one's time: for the floor of work the services do in many calls, done here
/// set-based. A script that must leave the data as it was wraps itself in BEGIN … ROLLBACK.
pub fn once(database_url: &str, statements: &[String], dir: &Path) -> anyhow::Result<Vec<Duration>> {
    let mut text = String::from("\\set ON_ERROR_STOP on\n\\timing on\n");
    for sql in statements {
        text.push_str(&sql.split_whitespace().collect::<Vec<_>>().join(" "));
        text.push_str(";\n");
    }
    let times = psql(database_url, &text, dir, statements.first().map_or("", String::as_str))?;
    if times.len() != statements.len() {
        bail!("psql timed {} statements of {}", times.len(), statements.len());
    }
    Ok(times)
}

/// Runs the psql script `text` and answers its `Time:` lines; `what` names it in errors.
fn psql(database_url: &str, text: &str, dir: &Path, what: &str) -> anyhow::Result<Vec<Duration>> {
    let file = dir.join(format!("direct-{}.sql", uuid::Uuid::new_v4().simple()));
    std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
    let output = Command::new("psql")
        .args(["-X", "-q", "-o", "/dev/null", "-f"])
        .arg(&file)
        .arg(database_url)
        .env("PGOPTIONS", "-c search_path=agent,workflow")
        .stdin(Stdio::null())
        .output()
        .context("running psql (install the PostgreSQL client)")?;
    let _ = std::fs::remove_file(&file);
    if !output.status.success() {
        bail!("psql on {what:?}… failed: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    timings(&String::from_utf8_lossy(&output.stdout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_prepared_with_their_types_and_executed_with_literals() {
        let statements: Statements = vec![
            ("SELECT 1 FROM t\n  WHERE a = $1 AND b = $2".into(), vec![Param::text("it's"), Param::int(7)]),
            ("SELECT $1".into(), vec![Param::null("uuid")]),
        ];
        let text = script(&statements, 2);
        assert!(text.contains("PREPARE s0(text, int8) AS SELECT 1 FROM t WHERE a = $1 AND b = $2;\n"));
        assert!(text.contains("PREPARE s1(uuid) AS SELECT $1;\n"));
        assert_eq!(text.matches("EXECUTE s0('it''s', '7');\nEXECUTE s1(NULL);\n").count(), 2);
    }

    #[test]
    fn a_statement_without_parameters_has_no_parentheses() {
        let text = script(&vec![("SELECT 1".into(), Vec::new())], 1);
        assert!(text.contains("PREPARE s0 AS SELECT 1;\n"));
        assert!(text.contains("EXECUTE s0;\n"));
    }

    #[test]
    fn timings_read_psqls_lines() {
        let out = "Time: 0.250 ms\nsomething\nTime: 1200.500 ms (00:01.201)\n";
        assert_eq!(timings(out).unwrap(), vec![Duration::from_micros(250), Duration::from_micros(1_200_500)]);
    }
}
