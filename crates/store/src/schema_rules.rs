//! The rules a migration follows so that taking it never stalls writers nor breaks the release
//! still running (`docs/operating.md`, "Upgrading"), checked on the SQL text by a test over
//! every migration from [`FIRST_CHECKED`] on.
//!
//! - It declares the oldest build it works with (`-- compatible-with: N`).
//! - An index is built `CONCURRENTLY`, alone in a `-- no-transaction` migration (PostgreSQL
//!   refuses a concurrent build inside a transaction, and a multi-statement file is one).
//! - A migration run in a transaction sets `SET LOCAL lock_timeout` before its first
//!   statement, so it waits seconds for a lock, not for as long as the longest transaction in
//!   its way while every writer queues behind it. (The runner sets one for the session too;
//!   the file says it so that the SQL run by hand behaves the same.)
//! - While it declares compatibility with an older build, it only adds: no drop, rename, new
//!   `NOT NULL` on an existing column, changed type, nor rewrite of rows (`UPDATE`, `DELETE`).
//!   Those are the contract half, a post-deployment step or a later release.
//! - A post-deployment step that rewrites rows (`UPDATE`, `DELETE`) does it in batches: a
//!   `-- batched` `-- no-transaction` step of one statement bounded by a `LIMIT`, which the
//!   runner repeats until it changes no row.

/// The first schema version the rules are checked on: the migrations before it predate them,
/// and their checksums (recorded in every database) freeze them as they are.
pub const FIRST_CHECKED: i64 = 13;

/// What one migration breaks of the rules, each a sentence; empty when it keeps them all.
/// `version` is the migration's, `post_deploy` whether it is a post-deployment step (which may
/// contract, but still never blocks writers).
pub fn check(version: i64, sql: &str, post_deploy: bool) -> Vec<String> {
    let no_tx = sql.starts_with("-- no-transaction");
    let statements = statements(sql);
    let mut broken = Vec::new();
    let declared = crate::schema::declared_compatibility(sql);
    if !post_deploy && declared.is_none() {
        broken.push("declares no `-- compatible-with: N` header".to_string());
    }
    for s in &statements {
        let is_index = s.starts_with("CREATE INDEX") || s.starts_with("CREATE UNIQUE INDEX");
        if is_index && !s.contains(" CONCURRENTLY ") {
            broken.push(format!("builds an index without CONCURRENTLY, blocking writers: `{}`", clip(s)));
        }
        if s.contains(" CONCURRENTLY ") && !(no_tx && statements.len() == 1) {
            broken.push(format!(
                "runs `{}` outside a `-- no-transaction` migration of its own (PostgreSQL refuses it in a transaction)",
                clip(s)
            ));
        }
    }
    if !no_tx && !statements.is_empty() && !statements[0].starts_with("SET LOCAL LOCK_TIMEOUT") {
        broken.push("does not start with `SET LOCAL lock_timeout = ...`".to_string());
    }
    if post_deploy {
        let batched = crate::schema::is_batched(sql) && no_tx && statements.len() == 1;
        for s in statements.iter().filter(|s| s.starts_with("UPDATE ") || s.starts_with("DELETE ")) {
            if !batched || !s.contains(" LIMIT ") {
                broken.push(format!(
                    "rewrites rows in one go: a `-- batched` `-- no-transaction` step of one statement bounded by a \
                     LIMIT does it in batches (`{}`)",
                    clip(s)
                ));
            }
        }
    }
    let contracting = post_deploy || declared.is_some_and(|with| with >= version);
    if !contracting {
        for s in &statements {
            if let Some(what) = contraction(s) {
                broken.push(format!(
                    "{what} while declaring compatibility with an older build: a post-deployment step or a later \
                     release does that (`{}`)",
                    clip(s)
                ));
            }
        }
    }
    broken
}

/// What kind of contraction a statement is, if it is one.
fn contraction(s: &str) -> Option<&'static str> {
    if s.starts_with("DROP ") && !s.starts_with("DROP INDEX") {
        return Some("drops something");
    }
    if s.starts_with("ALTER ") {
        if s.contains(" DROP COLUMN ") {
            return Some("drops a column");
        }
        if s.contains(" RENAME ") {
            return Some("renames something");
        }
        if s.contains(" SET NOT NULL") {
            return Some("adds NOT NULL to an existing column");
        }
        if s.contains(" TYPE ") {
            return Some("changes a column's type");
        }
    }
    if s.starts_with("UPDATE ") || s.starts_with("DELETE ") {
        return Some("rewrites rows");
    }
    None
}

/// The statements of `sql`, comments removed, whitespace collapsed and upper-cased (a plain
/// split on `;` outside quotes and `$$` bodies: enough for the shapes migrations have).
fn statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut in_quote = false;
    let mut in_dollar = false;
    for line in sql.lines() {
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            if !in_quote && !in_dollar && c == '-' && chars.peek() == Some(&'-') {
                break;
            }
            if !in_dollar && c == '\'' {
                in_quote = !in_quote;
            }
            if !in_quote && c == '$' && chars.peek() == Some(&'$') {
                in_dollar = !in_dollar;
            }
            if !in_quote && !in_dollar && c == ';' {
                out.push(std::mem::take(&mut current));
                continue;
            }
            current.push(c);
        }
        current.push(' ');
    }
    out.push(current);
    out.into_iter()
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" ").to_uppercase())
        .filter(|s| !s.is_empty())
        .map(|s| s + " ")
        .collect()
}

/// A statement cut for a message.
fn clip(s: &str) -> String {
    let s = s.trim();
    match s.char_indices().nth(80) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocking_index_build_is_refused() {
        let broken =
            check(20, "-- compatible-with: 19\nSET LOCAL lock_timeout = '5s';\nCREATE INDEX t_idx ON t (a);", false);
        assert_eq!(broken.len(), 1, "{broken:?}");
        assert!(broken[0].contains("without CONCURRENTLY"), "{broken:?}");
    }

    #[test]
    fn a_missing_lock_timeout_is_refused() {
        let broken = check(20, "-- compatible-with: 19\nALTER TABLE t ADD COLUMN b text;", false);
        assert_eq!(broken, ["does not start with `SET LOCAL lock_timeout = ...`"]);
    }

    #[test]
    fn a_concurrent_build_must_be_alone_outside_a_transaction() {
        let in_tx = check(
            20,
            "-- compatible-with: 19\nSET LOCAL lock_timeout = '5s';\nCREATE INDEX CONCURRENTLY i ON t (a);",
            false,
        );
        assert!(in_tx.iter().any(|b| b.contains("outside a `-- no-transaction`")), "{in_tx:?}");
        let two = check(
            20,
            "-- no-transaction\n-- compatible-with: 19\nCREATE INDEX CONCURRENTLY i ON t (a);\nCREATE INDEX CONCURRENTLY j ON t (b);",
            false,
        );
        assert!(two.iter().any(|b| b.contains("of its own")), "{two:?}");
        let good = check(
            20,
            "-- no-transaction\n-- compatible-with: 19\n-- Why.\nCREATE INDEX CONCURRENTLY IF NOT EXISTS i ON t (a)",
            false,
        );
        assert!(good.is_empty(), "{good:?}");
    }

    #[test]
    fn contracting_needs_a_post_deployment_step_or_a_declared_break() {
        for sql in [
            "ALTER TABLE t DROP COLUMN a;",
            "ALTER TABLE t RENAME COLUMN a TO b;",
            "ALTER TABLE t ALTER COLUMN a SET NOT NULL;",
            "ALTER TABLE t ALTER COLUMN a TYPE bigint;",
            "DROP TABLE t;",
            "UPDATE t SET a = 1;",
        ] {
            let expand = format!("-- compatible-with: 19\nSET LOCAL lock_timeout = '5s';\n{sql}");
            assert_eq!(check(20, &expand, false).len(), 1, "{sql}");
            let declared_break = format!("-- compatible-with: 20\nSET LOCAL lock_timeout = '5s';\n{sql}");
            assert!(check(20, &declared_break, false).is_empty(), "{sql}");
            if !sql.starts_with("UPDATE") {
                let step = format!("SET LOCAL lock_timeout = '5s';\n{sql}");
                assert!(check(20, &step, true).is_empty(), "{sql}");
            }
        }
        let adds = "-- compatible-with: 19\nSET LOCAL lock_timeout = '5s';\nALTER TABLE t ADD COLUMN b text;\n\
                    CREATE TABLE u (a text NOT NULL);";
        assert!(check(20, adds, false).is_empty());
    }

    #[test]
    fn a_rewrite_in_a_post_deployment_step_goes_in_batches() {
        let in_one_go = check(20, "SET LOCAL lock_timeout = '5s';\nUPDATE t SET b = a WHERE b IS NULL;", true);
        assert!(in_one_go.iter().any(|b| b.contains("in one go")), "{in_one_go:?}");
        let unbounded = check(20, "-- no-transaction\n-- batched\nUPDATE t SET b = a WHERE b IS NULL", true);
        assert!(unbounded.iter().any(|b| b.contains("in one go")), "{unbounded:?}");
        let batched = check(
            20,
            "-- no-transaction\n-- batched\nUPDATE t SET b = a WHERE id IN (SELECT id FROM t WHERE b IS NULL LIMIT 1000)",
            true,
        );
        assert!(batched.is_empty(), "{batched:?}");
    }

    #[test]
    fn quotes_comments_and_function_bodies_do_not_split_statements() {
        let sql = "SET LOCAL lock_timeout = '5s'; -- a; comment\nCREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql;\n\
                   INSERT INTO t VALUES ('a;b');";
        assert_eq!(statements(sql).len(), 3, "{:?}", statements(sql));
    }

    #[test]
    fn every_migration_and_post_deployment_step_keeps_the_rules() {
        for m in crate::schema::MIGRATOR.iter().filter(|m| m.version >= FIRST_CHECKED) {
            let broken = check(m.version, m.sql.as_str(), false);
            assert!(broken.is_empty(), "migration {} {}: {broken:?}", m.version, m.description);
        }
        for m in crate::schema::POST_DEPLOY.iter() {
            let broken = check(m.version, m.sql.as_str(), true);
            assert!(broken.is_empty(), "post-deployment step {} {}: {broken:?}", m.version, m.description);
        }
    }
}
