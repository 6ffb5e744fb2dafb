//! What a function created by a statement can do once it is called.
//!
//! A client can wrap a destructive statement in a function and call it
//! later (`CREATE FUNCTION f() ... AS 'TRUNCATE patients'; SELECT f()`): the
//! call itself shows nothing. So the CREATE is judged by its body: a SQL
//! body is analysed statement by statement and its effects become the
//! CREATE's effects; a PL/pgSQL body is scanned for the commands it can
//! run (every `DROP`, `TRUNCATE`, `DELETE`, ... word counts, even in dead
//! code), and one that builds SQL at run time (`EXECUTE`) or a body in any
//! other language is dynamic SQL: its effects cannot be known.
use sqlparser::{
    ast::{CreateFunctionBody, Expr, Statement, Value},
    tokenizer::Token,
};

use super::{Analyzer, Classification, DynamicSql, StatementKind, tokens};

/// Adds what the body of a `CREATE FUNCTION` in `statement` can do to `c`.
pub(crate) fn analyse(statement: &Statement, c: &mut Classification, analyzer: &Analyzer) {
    let Statement::CreateFunction(f) = statement else {
        return;
    };
    let language = f
        .language
        .as_ref()
        .map(|l| l.value.to_lowercase())
        .unwrap_or_else(|| "sql".to_owned());
    let body = match &f.function_body {
        Some(CreateFunctionBody::AsBeforeOptions { body, .. } | CreateFunctionBody::AsAfterOptions(body)) => {
            string_literal(body)
        }
        // `RETURN expr` and `BEGIN ATOMIC ... END`: plain SQL, as written.
        Some(CreateFunctionBody::Return(expr) | CreateFunctionBody::AsReturnExpr(expr)) => {
            Some(format!("SELECT {expr}"))
        }
        Some(CreateFunctionBody::AsReturnSelect(select)) => Some(select.to_string()),
        Some(CreateFunctionBody::AsBeginEnd(b) | CreateFunctionBody::BeginAtomic(b)) => Some(
            b.statements
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(";\n"),
        ),
        None => None,
    };
    let Some(body) = body else {
        unknown(c, &language);
        return;
    };
    match language.as_str() {
        "sql" => sql_body(&body, c, analyzer),
        "plpgsql" => plpgsql_body(&body, c, &language),
        _ => unknown(c, &language),
    }
    for list in [&mut c.effects, &mut c.unbounded_writes] {
        list.sort_by_key(|k| k.as_str());
        list.dedup();
    }
}

fn string_literal(e: &Expr) -> Option<String> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::EscapedStringLiteral(s) => Some(s.clone()),
            Value::DollarQuotedString(d) => Some(d.value.clone()),
            _ => None,
        },
        _ => None,
    }
}

fn unknown(c: &mut Classification, language: &str) {
    c.dynamic.get_or_insert(DynamicSql::FunctionBody {
        language: language.to_owned(),
    });
}

fn sql_body(body: &str, c: &mut Classification, analyzer: &Analyzer) {
    for stmt in analyzer.analyze(body).statements {
        match stmt.classification {
            Ok(inner) => {
                c.effects.extend(inner.effects);
                c.unbounded_writes.extend(inner.unbounded_writes);
                c.tables_written.extend(inner.tables_written);
                c.tables_read.extend(inner.tables_read);
                c.unknown_functions.extend(inner.unknown_functions);
                if let Some(d) = inner.dynamic {
                    c.dynamic.get_or_insert(d);
                }
            }
            // What cannot be parsed cannot be judged.
            Err(_) => unknown(c, "sql"),
        }
    }
    for list in [&mut c.unknown_functions, &mut c.tables_written, &mut c.tables_read] {
        list.sort_unstable();
        list.dedup();
    }
}

fn plpgsql_body(body: &str, c: &mut Classification, language: &str) {
    let Ok(toks) = tokens::tokenize(body) else {
        unknown(c, language);
        return;
    };
    // Words, with `;` kept as a separator between commands.
    let words: Vec<String> = toks
        .iter()
        .filter_map(|t| match &t.token {
            Token::Word(w) if w.quote_style.is_none() => Some(w.value.to_ascii_uppercase()),
            Token::SemiColon => Some(";".to_owned()),
            _ => None,
        })
        .collect();
    // `FOR UPDATE`, `FOR NO KEY UPDATE`: row locks, not writes.
    let lock = |i: usize| i > 0 && matches!(words[i - 1].as_str(), "FOR" | "KEY");
    // DELETE / UPDATE with no WHERE before the command's `;`.
    for (i, word) in words.iter().enumerate() {
        if lock(i) {
            continue;
        }
        let kind = match word.as_str() {
            "DELETE" => StatementKind::Delete,
            "UPDATE" => StatementKind::Update,
            _ => continue,
        };
        let command = words[i..].iter().take_while(|w| *w != ";");
        if !command.into_iter().any(|w| w == "WHERE") {
            c.unbounded_writes.push(kind);
        }
    }
    for (i, word) in words.iter().enumerate() {
        if lock(i) {
            continue;
        }
        let next = words.get(i + 1).map(String::as_str);
        let effect = match (word.as_str(), next) {
            ("EXECUTE", _) => {
                unknown(c, language);
                continue;
            }
            ("DROP", Some("TABLE")) => StatementKind::DropTable,
            ("DROP", Some("DATABASE")) => StatementKind::DropDatabase,
            ("DROP", Some("SCHEMA")) => StatementKind::DropSchema,
            ("DROP", _) => StatementKind::DropOther,
            ("TRUNCATE", _) => StatementKind::Truncate,
            ("DELETE", _) => StatementKind::Delete,
            ("UPDATE", _) => StatementKind::Update,
            ("INSERT", _) => StatementKind::Insert,
            ("MERGE", _) => StatementKind::Merge,
            ("ALTER", _) => StatementKind::Alter,
            ("GRANT", _) => StatementKind::Grant,
            ("REVOKE", _) => StatementKind::Revoke,
            ("COPY", _) => StatementKind::CopyFrom,
            ("CREATE", _) => StatementKind::CreateOther,
            // PERFORM f(), SELECT f(): calls whose bodies are not here.
            ("PERFORM", _) => StatementKind::Call,
            _ => continue,
        };
        c.effects.push(effect);
    }
}
