//! The outbox table's name, and the shipped SQL rewritten for it.

use std::fmt;

use crate::error::{Error, Result};

/// The table name the shipped SQL files use, and the default.
pub const DEFAULT_TABLE: &str = "courier_outbox";

/// Longest table name: PostgreSQL identifiers have at most 63 bytes, and
/// index names append up to 12 (`_pending_key`).
pub const MAX_TABLE_LEN: usize = 63 - 12;

/// The name of an outbox table: a plain SQL identifier (`[A-Za-z_][A-Za-z0-9_]*`,
/// at most [`MAX_TABLE_LEN`] bytes), on PostgreSQL optionally qualified by a
/// schema (`app.outbox`). Names are quoted in every statement, so case is
/// kept.
///
/// # Examples
///
/// ```
/// use courier_outbox::TableName;
/// assert_eq!(TableName::default().to_string(), "courier_outbox");
/// assert!(TableName::new("billing.outbox").is_ok());
/// assert!(TableName::new("outbox; DROP TABLE users").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableName {
    schema: Option<String>,
    table: String,
}

impl Default for TableName {
    fn default() -> Self {
        TableName {
            schema: None,
            table: DEFAULT_TABLE.to_owned(),
        }
    }
}

impl TableName {
    /// Parses `table` or `schema.table`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTableName`] when a part is empty, too long, or not an
    /// identifier.
    pub fn new(name: &str) -> Result<Self> {
        let invalid = |reason| Error::InvalidTableName {
            name: name.to_owned(),
            reason,
        };
        let (schema, table) = match name.split_once('.') {
            Some((schema, table)) => (Some(schema), table),
            None => (None, name),
        };
        if let Some(schema) = schema {
            check_identifier(schema, 63).map_err(invalid)?;
        }
        check_identifier(table, MAX_TABLE_LEN).map_err(invalid)?;
        Ok(TableName {
            schema: schema.map(str::to_owned),
            table: table.to_owned(),
        })
    }

    /// The schema, if the name has one.
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    /// The table without its schema.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The name as SQL: quoted, schema-qualified where it has a schema.
    pub(crate) fn quoted(&self) -> String {
        match &self.schema {
            Some(schema) => format!("\"{schema}\".\"{}\"", self.table),
            None => format!("\"{}\"", self.table),
        }
    }

    /// The SQL of a shipped file rewritten for this table: every
    /// `courier_outbox` becomes this (quoted) name, and every
    /// `courier_outbox_<suffix>` (an index) becomes `"<table>_<suffix>"`.
    pub(crate) fn rewrite(&self, sql: &str) -> String {
        let mut out = String::with_capacity(sql.len() + 64);
        let mut rest = sql;
        while let Some(at) = rest.find(DEFAULT_TABLE) {
            out.push_str(&rest[..at]);
            rest = &rest[at + DEFAULT_TABLE.len()..];
            let suffix_len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            if suffix_len == 0 {
                out.push_str(&self.quoted());
            } else {
                out.push_str(&format!("\"{}{}\"", self.table, &rest[..suffix_len]));
                rest = &rest[suffix_len..];
            }
        }
        out.push_str(rest);
        out
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(schema) => write!(f, "{schema}.{}", self.table),
            None => f.write_str(&self.table),
        }
    }
}

fn check_identifier(part: &str, max_len: usize) -> Result<(), &'static str> {
    let mut chars = part.chars();
    match chars.next() {
        None => return Err("a part is empty"),
        Some(c) if !(c.is_ascii_alphabetic() || c == '_') => {
            return Err("a part starts with something other than a letter or '_'");
        }
        Some(_) => {}
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err("only A-Z, a-z, 0-9 and '_' are allowed");
    }
    if part.len() > max_len {
        return Err("a part is too long");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_sql_is_rewritten_for_the_table() {
        let sql = "CREATE TABLE IF NOT EXISTS courier_outbox (seq int);\n\
                   CREATE INDEX IF NOT EXISTS courier_outbox_pending ON courier_outbox (seq);";
        let name = TableName::new("app.Outbox_1").unwrap();
        assert_eq!(
            name.rewrite(sql),
            "CREATE TABLE IF NOT EXISTS \"app\".\"Outbox_1\" (seq int);\n\
             CREATE INDEX IF NOT EXISTS \"Outbox_1_pending\" ON \"app\".\"Outbox_1\" (seq);"
        );
    }

    #[test]
    fn names_that_are_not_identifiers_are_refused() {
        for bad in ["", "1abc", "a-b", "a.b.c", "a..b", ".a", "a b", "\"a\""] {
            assert!(TableName::new(bad).is_err(), "{bad:?}");
        }
        assert!(TableName::new(&"a".repeat(MAX_TABLE_LEN)).is_ok());
        assert!(TableName::new(&"a".repeat(MAX_TABLE_LEN + 1)).is_err());
    }
}
