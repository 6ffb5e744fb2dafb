//! What lineage knows about functions: which built-ins compute their result
//! from their arguments alone (so the result derives from exactly the
//! columns passed in), and which of those cannot leak an argument's value.
//!
//! A function on neither list is *opaque*: its body may read any table
//! (a client-created `pg_temp` function, a view-like SQL function), so its
//! result is treated as PHI. Functions called with the `pg_catalog.` or
//! `information_schema.` schema are PostgreSQL's own and are known; any
//! other schema-qualified name is opaque even when its base name is on a
//! list (`public.length` is not `pg_catalog.length`).

/// Functions whose result cannot carry an argument's value, only a count
/// or a size of it. Each is safe for the reason given:
///
/// - `count`: how many rows (or non-NULL values) — a number of rows, which
///   the row count of any result shows anyway.
/// - `length`, `char_length`, `character_length`, `octet_length`,
///   `bit_length`: the size of a value, never its characters.
/// - `array_length`, `cardinality`, `array_ndims`: the shape of an array.
/// - `num_nulls`, `num_nonnulls`: how many arguments are NULL.
/// - `pg_column_size`: the stored size in bytes.
///
/// `IS NULL` / `IS NOT NULL` are safe for the same reason (one bit: present
/// or not). Comparisons (`ssn = '…'`) are *not* here: they answer a guess
/// about the value, which is the predicate oracle the HIPAA pack's
/// `refuse_phi_predicates` option addresses.
///
/// A safe result is only trusted when it arrives as an integer or boolean
/// column: a function of the same name that a client placed before
/// `pg_catalog` in `search_path` and that returns text is masked anyway.
pub const SAFE: &[&str] = &[
    "count",
    "length",
    "char_length",
    "character_length",
    "octet_length",
    "bit_length",
    "array_length",
    "cardinality",
    "array_ndims",
    "num_nulls",
    "num_nonnulls",
    "pg_column_size",
];

/// Built-in functions whose result depends only on their arguments (and on
/// the catalog or the session, never on table rows): the result derives
/// from the argument columns, so `upper(ssn)` is PHI and `upper(city)` is
/// not.
pub const KNOWN: &[&str] = &[
    // strings
    "abs",
    "ascii",
    "btrim",
    "chr",
    "concat",
    "concat_ws",
    "convert",
    "convert_from",
    "convert_to",
    "decode",
    "encode",
    "format",
    "initcap",
    "left",
    "lower",
    "lpad",
    "ltrim",
    "md5",
    "normalize",
    "overlay",
    "position",
    "quote_ident",
    "quote_literal",
    "quote_nullable",
    "regexp_count",
    "regexp_instr",
    "regexp_like",
    "regexp_match",
    "regexp_matches",
    "regexp_replace",
    "regexp_split_to_array",
    "regexp_split_to_table",
    "regexp_substr",
    "repeat",
    "replace",
    "reverse",
    "right",
    "rpad",
    "rtrim",
    "split_part",
    "starts_with",
    "string_to_array",
    "string_to_table",
    "strpos",
    "substr",
    "substring",
    "to_ascii",
    "to_hex",
    "translate",
    "trim",
    "unistr",
    "upper",
    "sha224",
    "sha256",
    "sha384",
    "sha512",
    "get_byte",
    "set_byte",
    "get_bit",
    "set_bit",
    "bit_count",
    // numbers
    "cbrt",
    "ceil",
    "ceiling",
    "degrees",
    "div",
    "exp",
    "factorial",
    "floor",
    "gcd",
    "lcm",
    "ln",
    "log",
    "log10",
    "mod",
    "pi",
    "power",
    "pow",
    "radians",
    "round",
    "scale",
    "sign",
    "sqrt",
    "trunc",
    "width_bucket",
    "random",
    "setseed",
    "greatest",
    "least",
    "nullif",
    "coalesce",
    "sin",
    "cos",
    "tan",
    "asin",
    "acos",
    "atan",
    "atan2",
    // dates and times
    "age",
    "clock_timestamp",
    "current_date",
    "current_time",
    "current_timestamp",
    "date_bin",
    "date_part",
    "date_trunc",
    "extract",
    "isfinite",
    "justify_days",
    "justify_hours",
    "justify_interval",
    "localtime",
    "localtimestamp",
    "make_date",
    "make_interval",
    "make_time",
    "make_timestamp",
    "make_timestamptz",
    "now",
    "statement_timestamp",
    "timeofday",
    "transaction_timestamp",
    "to_char",
    "to_date",
    "to_number",
    "to_timestamp",
    "timezone",
    // json and arrays
    "array",
    "array_agg",
    "array_append",
    "array_cat",
    "array_dims",
    "array_fill",
    "array_lower",
    "array_position",
    "array_positions",
    "array_prepend",
    "array_remove",
    "array_replace",
    "array_to_json",
    "array_to_string",
    "array_upper",
    "json_agg",
    "json_array_elements",
    "json_array_elements_text",
    "json_array_length",
    "json_build_array",
    "json_build_object",
    "json_each",
    "json_each_text",
    "json_extract_path",
    "json_extract_path_text",
    "json_object",
    "json_object_agg",
    "json_object_keys",
    "json_populate_record",
    "json_strip_nulls",
    "json_to_record",
    "json_to_recordset",
    "json_typeof",
    "jsonb_agg",
    "jsonb_array_elements",
    "jsonb_array_elements_text",
    "jsonb_array_length",
    "jsonb_build_array",
    "jsonb_build_object",
    "jsonb_each",
    "jsonb_each_text",
    "jsonb_extract_path",
    "jsonb_extract_path_text",
    "jsonb_insert",
    "jsonb_object",
    "jsonb_object_agg",
    "jsonb_object_keys",
    "jsonb_path_query",
    "jsonb_path_query_array",
    "jsonb_path_query_first",
    "jsonb_pretty",
    "jsonb_set",
    "jsonb_strip_nulls",
    "jsonb_to_record",
    "jsonb_to_recordset",
    "jsonb_typeof",
    "row_to_json",
    "to_json",
    "to_jsonb",
    "unnest",
    "generate_series",
    "generate_subscripts",
    "row",
    // aggregates and windows
    "avg",
    "bit_and",
    "bit_or",
    "bool_and",
    "bool_or",
    "every",
    "max",
    "min",
    "string_agg",
    "sum",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "variance",
    "var_pop",
    "var_samp",
    "mode",
    "percentile_cont",
    "percentile_disc",
    "rank",
    "dense_rank",
    "row_number",
    "ntile",
    "lag",
    "lead",
    "first_value",
    "last_value",
    "nth_value",
    "cume_dist",
    "percent_rank",
    // session and server information
    "current_catalog",
    "current_database",
    "current_query",
    "current_role",
    "current_schema",
    "current_schemas",
    "current_setting",
    "current_user",
    "session_user",
    "user",
    "inet_client_addr",
    "inet_client_port",
    "inet_server_addr",
    "inet_server_port",
    "version",
    "gen_random_uuid",
    "uuid",
    "txid_current",
    "set_config",
    "format_type",
    "obj_description",
    "col_description",
    "shobj_description",
    "has_table_privilege",
    "has_column_privilege",
    "has_schema_privilege",
    "has_database_privilege",
    "has_function_privilege",
    "to_regclass",
    "to_regtype",
    "to_regproc",
    "to_regnamespace",
    "to_regrole",
    // what pg_dump and psql ask of the catalog, unqualified
    "acldefault",
    "aclexplode",
    "makeaclitem",
];

/// Whether `name` (already lower-case, schema stripped) is a known built-in.
fn known(name: &str) -> bool {
    KNOWN.contains(&name) || is_catalog_info(name)
}

/// Functions in `pg_catalog` that read data a table or file holds, or run
/// SQL text: opaque even when schema-qualified.
fn reads_data(name: &str) -> bool {
    name.starts_with("lo_")
        || name.starts_with("pg_read")
        || name.ends_with("_to_xml")
        || name.ends_with("_to_xmlschema")
        || name.ends_with("_to_xml_and_xmlschema")
        || name == "loread"
        || name == "ts_stat"
        || name == "ts_rewrite"
}

/// `pg_*` functions that read only the catalog or the server's state
/// (psql, pg_dump and drivers call them, mostly schema-qualified).
fn is_catalog_info(name: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "pg_get_",
        "pg_table_is_visible",
        "pg_type_is_visible",
        "pg_function_is_visible",
        "pg_backend_pid",
        "pg_is_in_recovery",
        "pg_encoding_to_char",
        "pg_size_pretty",
        "pg_relation_size",
        "pg_total_relation_size",
        "pg_table_size",
        "pg_indexes_size",
        "pg_database_size",
        "pg_postmaster_start_time",
        "pg_current_wal_lsn",
        "pg_typeof",
        "pg_has_role",
        "pg_my_temp_schema",
        "pg_is_other_temp_schema",
        "pg_char_to_encoding",
        "pg_client_encoding",
        "pg_sleep",
        "pg_options_to_table",
        "pg_tablespace_location",
        "pg_describe_object",
        "pg_identify_object",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p))
}

/// How lineage treats a call of `name` qualified by `schema`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FunctionClass {
    /// Result cannot carry an argument's value.
    Safe,
    /// Result derives from the arguments only.
    Known,
    /// Body unknown: the result may carry anything.
    Opaque,
}

/// Classifies a call. `schema` and `name` are lower-case.
pub fn classify(schema: Option<&str>, name: &str) -> FunctionClass {
    match schema {
        None | Some("pg_catalog") | Some("information_schema") => {}
        Some(_) => return FunctionClass::Opaque,
    }
    if reads_data(name) {
        FunctionClass::Opaque
    } else if SAFE.contains(&name) {
        FunctionClass::Safe
    } else if known(name) || schema.is_some() {
        // Anything PostgreSQL ships in pg_catalog or information_schema
        // reads no user table.
        FunctionClass::Known
    } else {
        FunctionClass::Opaque
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_are_known_and_others_opaque() {
        assert_eq!(classify(None, "upper"), FunctionClass::Known);
        assert_eq!(classify(None, "count"), FunctionClass::Safe);
        assert_eq!(classify(Some("pg_catalog"), "format_type"), FunctionClass::Known);
        assert_eq!(classify(Some("pg_catalog"), "anything_shipped"), FunctionClass::Known);
        assert_eq!(classify(None, "pg_get_userbyid"), FunctionClass::Known);
        assert_eq!(classify(None, "my_func"), FunctionClass::Opaque);
        assert_eq!(classify(None, "pg_leak"), FunctionClass::Opaque);
        assert_eq!(classify(Some("pg_temp"), "upper"), FunctionClass::Opaque);
        assert_eq!(classify(Some("public"), "length"), FunctionClass::Opaque);
        assert_eq!(classify(Some("pg_catalog"), "lo_get"), FunctionClass::Opaque);
        assert_eq!(classify(Some("pg_catalog"), "query_to_xml"), FunctionClass::Opaque);
    }
}
