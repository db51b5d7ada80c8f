//! `COPY … FROM STDIN` in PostgreSQL's text format: rows built in Rust and streamed to the
//! server in chunks, so that a million rows never sit in memory at once.

use std::fmt::{Display, Write as _};

use anyhow::Context as _;
use sqlx::postgres::{PgConnection, PgCopyIn};

/// Bytes buffered before they are sent.
const CHUNK_BYTES: usize = 1 << 20;

/// Rows in COPY's text format: fields separated by tabs, rows ended by a newline, `\N` for NULL,
/// and backslash, tab, newline and carriage return escaped in text.
#[derive(Default)]
pub struct TextRows {
    buf: String,
    fields_in_row: usize,
    rows: u64,
}

impl TextRows {
    fn separate(&mut self) {
        if self.fields_in_row > 0 {
            self.buf.push('\t');
        }
        self.fields_in_row += 1;
    }

    /// A text field, escaped.
    pub fn text(&mut self, value: &str) -> &mut Self {
        self.separate();
        for c in value.chars() {
            match c {
                '\\' => self.buf.push_str("\\\\"),
                '\t' => self.buf.push_str("\\t"),
                '\n' => self.buf.push_str("\\n"),
                '\r' => self.buf.push_str("\\r"),
                c => self.buf.push(c),
            }
        }
        self
    }

    /// A field whose text form has nothing to escape: numbers, UUIDs, timestamps, booleans.
    pub fn plain(&mut self, value: impl Display) -> &mut Self {
        self.separate();
        let _ = write!(self.buf, "{value}");
        self
    }

    pub fn null(&mut self) -> &mut Self {
        self.separate();
        self.buf.push_str("\\N");
        self
    }

    /// A nullable text field.
    pub fn opt_text(&mut self, value: Option<&str>) -> &mut Self {
        match value {
            Some(v) => self.text(v),
            None => self.null(),
        }
    }

    pub fn end_row(&mut self) {
        self.buf.push('\n');
        self.fields_in_row = 0;
        self.rows += 1;
    }

    #[cfg(test)]
    fn as_str(&self) -> &str {
        &self.buf
    }
}

/// One table being filled by COPY on `conn`.
pub struct TableCopy<'c> {
    table: String,
    copy: PgCopyIn<&'c mut PgConnection>,
    pub rows: TextRows,
}

impl<'c> TableCopy<'c> {
    pub async fn begin(conn: &'c mut PgConnection, table: &str, columns: &[&str]) -> anyhow::Result<Self> {
        let statement = format!("COPY {table} ({}) FROM STDIN", columns.join(", "));
        let copy = conn.copy_in_raw(&statement).await.with_context(|| format!("starting {statement}"))?;
        Ok(Self { table: table.to_owned(), copy, rows: TextRows::default() })
    }

    /// Sends what is buffered once it is a chunk's worth; call after each row.
    pub async fn flush_if_full(&mut self) -> anyhow::Result<()> {
        if self.rows.buf.len() >= CHUNK_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        if !self.rows.buf.is_empty() {
            self.copy.send(self.rows.buf.as_bytes()).await.with_context(|| format!("COPY into {}", self.table))?;
            self.rows.buf.clear();
        }
        Ok(())
    }

    /// Sends the rest and ends the COPY; answers the rows the server took.
    pub async fn finish(mut self) -> anyhow::Result<u64> {
        self.flush().await?;
        let written = self.copy.finish().await.with_context(|| format!("finishing the COPY into {}", self.table))?;
        anyhow::ensure!(
            written == self.rows.rows,
            "COPY into {} took {written} rows of {}",
            self.table,
            self.rows.rows
        );
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_rows_escape_what_copy_reads_specially() {
        let mut rows = TextRows::default();
        rows.text("a\tb\nc\\d\re").plain(42).null().opt_text(Some("x")).opt_text(None);
        rows.end_row();
        rows.plain(true).end_row();
        assert_eq!(rows.as_str(), "a\\tb\\nc\\\\d\\re\t42\t\\N\tx\t\\N\ntrue\n");
        assert_eq!(rows.rows, 2);
    }
}
