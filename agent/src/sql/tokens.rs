//! Token-level work: splitting a multi-statement string, the literal-free
//! text and fingerprint, and the literal-masked text.
//!
//! Splitting on the tokenizer's `;` tokens (not on raw text) means semicolons
//! inside strings, dollar quotes, quoted identifiers and comments never split.
use std::fmt::Write as _;

use sha2::{Digest, Sha256};
use sqlparser::{
    dialect::PostgreSqlDialect,
    tokenizer::{Token, TokenWithSpan, Tokenizer, Whitespace, Word},
};

use super::{Fingerprint, SqlError};
use crate::mask::Masker;

pub(crate) fn tokenize(sql: &str) -> Result<Vec<TokenWithSpan>, SqlError> {
    Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize_with_location()
        .map_err(|e| SqlError::Tokenize {
            message: e.message,
            line: e.location.line,
            column: e.location.column,
        })
}

/// Splits at top-level `;` (outside parentheses: `CREATE RULE ... DO (a; b)`),
/// dropping statements that are only whitespace and comments.
pub(crate) fn split(tokens: Vec<TokenWithSpan>) -> Vec<Vec<TokenWithSpan>> {
    let mut statements = Vec::new();
    let mut current = Vec::new();
    let mut depth = 0usize;
    for token in tokens {
        match token.token {
            Token::LParen => depth += 1,
            Token::RParen => depth = depth.saturating_sub(1),
            Token::SemiColon if depth == 0 => {
                push_statement(&mut statements, std::mem::take(&mut current));
                continue;
            }
            Token::EOF => continue,
            _ => {}
        }
        current.push(token);
    }
    push_statement(&mut statements, current);
    statements
}

fn push_statement(statements: &mut Vec<Vec<TokenWithSpan>>, tokens: Vec<TokenWithSpan>) {
    if tokens.iter().any(|t| !matches!(t.token, Token::Whitespace(_))) {
        statements.push(tokens);
    }
}

/// Literal values and parameter placeholders: what changes between
/// executions of the same statement shape.
fn is_value(token: &Token) -> bool {
    matches!(
        token,
        Token::Number(..)
            | Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::TripleSingleQuotedString(_)
            | Token::TripleDoubleQuotedString(_)
            | Token::DollarQuotedString(_)
            | Token::SingleQuotedByteStringLiteral(_)
            | Token::DoubleQuotedByteStringLiteral(_)
            | Token::TripleSingleQuotedByteStringLiteral(_)
            | Token::TripleDoubleQuotedByteStringLiteral(_)
            | Token::SingleQuotedRawStringLiteral(_)
            | Token::DoubleQuotedRawStringLiteral(_)
            | Token::TripleSingleQuotedRawStringLiteral(_)
            | Token::TripleDoubleQuotedRawStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::QuoteDelimitedStringLiteral(_)
            | Token::NationalQuoteDelimitedStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::HexStringLiteral(_)
            | Token::Placeholder(_)
    )
}

/// Text with every literal and parameter replaced by `?`, comments dropped
/// and whitespace runs collapsed: carries no data values, so it is safe to
/// record and to group by.
pub(crate) fn normalized_text(tokens: &[TokenWithSpan]) -> String {
    let mut out = String::new();
    let mut pending_space = false;
    for t in tokens {
        if let Token::Whitespace(_) = t.token {
            pending_space = true;
            continue;
        }
        if pending_space && !out.is_empty() {
            out.push(' ');
        }
        pending_space = false;
        if is_value(&t.token) {
            out.push('?');
        } else {
            push_token(&mut out, &t.token);
        }
    }
    out
}

/// Appends a token as written, without a String of its own.
fn push_token(out: &mut String, token: &Token) {
    // Writing to a String cannot fail.
    let _ = write!(out, "{token}");
}

/// Full SHA-256 of the statement's shape, plus the literal numbers after
/// `LIMIT` / `FETCH FIRST|NEXT` (they are part of the classification).
/// Keys the shape cache: 256 bits, so two different statements cannot be
/// made to share a key (a 64-bit key could be collided on purpose).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ShapeKey(pub(crate) [u8; 32]);

/// Stable hash of the statement's shape: tokens without whitespace and
/// comments, unquoted words lower-cased (as PostgreSQL folds them), values
/// and parameters as `?`. SHA-256 based, so it is the same on every host and
/// release as long as the tokenizer is. Returns the displayed 64-bit
/// fingerprint and the full shape-cache key.
pub(crate) fn shape(tokens: &[TokenWithSpan]) -> (Fingerprint, ShapeKey) {
    let mut fingerprint = Sha256::new();
    // The literal numbers after LIMIT / FETCH FIRST|NEXT, each ended by 0x1f.
    let mut limits = Vec::new();
    let mut after_limit = false;
    let mut canonical = String::with_capacity(32);
    for t in tokens {
        canonical.clear();
        match &t.token {
            Token::Whitespace(_) => continue,
            token if is_value(token) => {
                if let (true, Token::Number(n, _)) = (after_limit, token) {
                    limits.extend_from_slice(n.as_bytes());
                    limits.push(0x1f);
                }
                canonical.push('?');
            }
            Token::Word(Word {
                value,
                quote_style: None,
                ..
            }) => {
                canonical.push_str(value);
                canonical.make_ascii_lowercase();
            }
            token => push_token(&mut canonical, token),
        }
        // `LIMIT 10`, `LIMIT (10)`, `FETCH FIRST 10`.
        after_limit = match &t.token {
            Token::Word(w) => {
                w.quote_style.is_none()
                    && ["limit", "first", "next"]
                        .iter()
                        .any(|k| w.value.eq_ignore_ascii_case(k))
            }
            Token::LParen => after_limit,
            _ => false,
        };
        fingerprint.update(canonical.as_bytes());
        fingerprint.update([0x1f]);
    }
    let digest = fingerprint.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    // The key: the whole shape digest, then the limits.
    let key = Sha256::new().chain_update(digest).chain_update(&limits).finalize();
    (Fingerprint(u64::from_be_bytes(first)), ShapeKey(key.into()))
}

#[cfg(test)]
pub(crate) fn fingerprint(tokens: &[TokenWithSpan]) -> Fingerprint {
    shape(tokens).0
}

/// The statement as written, with PHI the detectors find masked inside
/// literals and comments.
pub(crate) fn masked_text(tokens: &[TokenWithSpan], masker: &Masker) -> String {
    let mut out = String::new();
    let quoted = |out: &mut String, prefix: &str, value: &str| {
        out.push_str(prefix);
        out.push('\'');
        for (i, part) in masker.mask_free_text(value).split('\'').enumerate() {
            if i > 0 {
                out.push_str("''");
            }
            out.push_str(part);
        }
        out.push('\'');
    };
    for t in tokens {
        match &t.token {
            Token::Whitespace(Whitespace::SingleLineComment { comment, prefix }) => {
                out.push_str(prefix);
                out.push_str(&masker.mask_free_text(comment));
            }
            Token::Whitespace(Whitespace::MultiLineComment(comment)) => {
                out.push_str("/*");
                out.push_str(&masker.mask_free_text(comment));
                out.push_str("*/");
            }
            Token::Number(n, _) => out.push_str(&masker.mask_free_text(n)),
            Token::NationalStringLiteral(s) => quoted(&mut out, "N", s),
            Token::HexStringLiteral(s) => quoted(&mut out, "X", s),
            Token::DollarQuotedString(s) => quoted(&mut out, "", &s.value),
            Token::SingleQuotedString(s)
            | Token::EscapedStringLiteral(s)
            | Token::UnicodeStringLiteral(s)
            | Token::TripleSingleQuotedString(s)
            | Token::SingleQuotedByteStringLiteral(s)
            | Token::SingleQuotedRawStringLiteral(s) => quoted(&mut out, "", s),
            token if is_value(token) && !matches!(token, Token::Placeholder(_)) => {
                out.push_str(&masker.mask_free_text(&token.to_string()))
            }
            token => push_token(&mut out, token),
        }
    }
    out.truncate(out.trim_end().len());
    let leading = out.len() - out.trim_start().len();
    out.drain(..leading);
    out
}

/// Whether the statement starts with the `DO` keyword (an anonymous code
/// block: its body is PL/pgSQL the classifier cannot see into).
pub(crate) fn is_do_block(tokens: &[TokenWithSpan]) -> bool {
    tokens
        .iter()
        .find(|t| !matches!(t.token, Token::Whitespace(_)))
        .is_some_and(
            |t| matches!(&t.token, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case("do")),
        )
}

/// `OPERATOR(pg_catalog.=)` (and `OPERATOR(=)`) is the built-in operator
/// spelled so that no `search_path` can redirect it; pg_dump and psql write
/// their catalog queries this way. The parser takes `a OPERATOR(x.=) b` but
/// not `... OPERATOR(x.=) ANY (...)`, so the built-in spelling becomes the
/// plain operator token before parsing. An operator of any other schema is
/// left as written (a user's operator: its function is not known).
pub(crate) fn plain_catalog_operators(tokens: Vec<TokenWithSpan>) -> Vec<TokenWithSpan> {
    let is_operator_word =
        |t: &Token| matches!(t, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case("operator"));
    if !tokens.iter().any(|t| is_operator_word(&t.token)) {
        return tokens;
    }
    let mut out = Vec::with_capacity(tokens.len());
    let mut i = 0;
    while i < tokens.len() {
        if is_operator_word(&tokens[i].token)
            && let Some((op, next)) = catalog_operator(&tokens, i + 1)
        {
            out.push(TokenWithSpan {
                token: op,
                span: tokens[i].span,
            });
            i = next;
            continue;
        }
        out.push(tokens[i].clone());
        i += 1;
    }
    out
}

/// After `OPERATOR` at `start`: `( [pg_catalog .] op )` → the operator
/// token and the index after `)`.
fn catalog_operator(tokens: &[TokenWithSpan], start: usize) -> Option<(Token, usize)> {
    let significant: Vec<(usize, &Token)> = tokens[start..]
        .iter()
        .enumerate()
        .filter(|(_, t)| !matches!(t.token, Token::Whitespace(_)))
        .take(5)
        .map(|(i, t)| (start + i, &t.token))
        .collect();
    let [(_, Token::LParen), rest @ ..] = significant.as_slice() else {
        return None;
    };
    let (op, close) = match rest {
        [
            (_, Token::Word(schema)),
            (_, Token::Period),
            (_, op),
            (close, Token::RParen),
            ..,
        ] if schema.quote_style.is_none() && schema.value.eq_ignore_ascii_case("pg_catalog") => (*op, *close),
        [(_, op), (close, Token::RParen), ..] => (*op, *close),
        _ => return None,
    };
    let plain = !matches!(
        op,
        Token::Word(_) | Token::LParen | Token::RParen | Token::Period | Token::Whitespace(_) | Token::EOF
    );
    plain.then(|| (op.clone(), close + 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::MaskConfig;

    fn statements(sql: &str) -> Vec<String> {
        split(tokenize(sql).unwrap())
            .iter()
            .map(|t| normalized_text(t))
            .collect()
    }

    #[test]
    fn splits_only_on_top_level_semicolons() {
        assert_eq!(
            statements("select 'a;b', $x$;$x$, \"c;d\" from t; /* ; */ drop table t -- ;\n;;"),
            ["select ?, ?, \"c;d\" from t", "drop table t"]
        );
        assert_eq!(statements(" ; -- only a comment\n"), Vec::<String>::new());
    }

    #[test]
    fn fingerprint_ignores_literals_case_space_comments_and_param_numbers() {
        let fp = |sql: &str| fingerprint(&split(tokenize(sql).unwrap())[0]);
        let base = fp("SELECT name FROM patients WHERE id = 42");
        assert_eq!(base, fp("select  name\nfrom Patients /* hi */ where id = 7"));
        assert_eq!(base, fp("SELECT name FROM patients WHERE id = $1"));
        assert_eq!(
            fp("select * from t where a = $1 and b = $2"),
            fp("select * from t where a = $2 and b = $1")
        );
        assert_ne!(base, fp("SELECT name FROM patients WHERE mrn = 42"));
        assert_ne!(base, fp("SELECT name FROM \"Patients\" WHERE id = 42"));
        assert_ne!(base, fp("SELECT name FROM patients WHERE id > 42"));
    }

    #[test]
    fn shape_key_separates_limit_values_but_fingerprint_does_not() {
        let shape_of = |sql: &str| shape(&split(tokenize(sql).unwrap())[0]);
        let (f10, k10) = shape_of("select * from t where a = 1 limit 10");
        let (f20, k20) = shape_of("select * from t where a = 2 limit 20");
        let (_, k10b) = shape_of("SELECT * FROM t WHERE a = 3 LIMIT 10");
        assert_eq!(f10, f20);
        assert_ne!(k10, k20);
        assert_eq!(k10, k10b);
        assert_ne!(shape_of("select 1 limit (1)").1, shape_of("select 1 limit (2)").1);
        assert_ne!(
            shape_of("select 1 fetch first 1 rows only").1,
            shape_of("select 1 fetch first 2 rows only").1
        );
    }

    #[test]
    fn normalized_text_has_no_literals() {
        let sql = "SELECT * FROM p WHERE ssn = '123-45-6789' AND n = E'x\\'y' AND d = $$z$$ AND k = -5";
        assert_eq!(
            statements(sql),
            ["SELECT * FROM p WHERE ssn = ? AND n = ? AND d = ? AND k = -?"]
        );
    }

    #[test]
    fn masked_text_keeps_literals_but_masks_phi() {
        let masker = Masker::new(&MaskConfig::default(), None).unwrap();
        let tokens = &split(
            tokenize("select * from p where ssn = '123-45-6789' and name = 'O''Brien' -- call 555-234-5678\n").unwrap(),
        )[0];
        assert_eq!(
            masked_text(tokens, &masker),
            "select * from p where ssn = '***' and name = 'O''Brien' -- call ***"
        );
    }

    #[test]
    fn do_block_detection() {
        assert!(is_do_block(&tokenize("  /* x */ Do $$ begin end $$").unwrap()));
        assert!(!is_do_block(&tokenize("select do from t").unwrap()));
        assert!(!is_do_block(&tokenize("\"do\" x").unwrap()));
    }

    #[test]
    fn catalog_operators_become_plain_operators() {
        let plain = |sql: &str| normalized_text(&plain_catalog_operators(tokenize(sql).unwrap()));
        assert_eq!(
            plain("select 1 where a OPERATOR(pg_catalog.=) ANY (b) and c operator( pg_catalog . ~ ) 'x'"),
            "select ? where a = ANY (b) and c ~ ?"
        );
        assert_eq!(plain("select a OPERATOR(=) b"), "select a = b");
        // A user's operator, and a word named operator, stay as written.
        assert_eq!(plain("select a OPERATOR(public.=) b"), "select a OPERATOR(public.=) b");
        assert_eq!(plain("select operator from t"), "select operator from t");
    }
}
