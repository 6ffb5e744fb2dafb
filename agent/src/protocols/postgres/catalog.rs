//! What a result's columns really are. A RowDescription names columns by
//! their output name, which a query can alias at will (`SELECT ssn AS x`);
//! it also carries each column's table OID and attribute number, which
//! this module resolves to the real `table.column` through a side
//! connection of loopgate's own, so masking rules cannot be sidestepped by
//! renaming. Resolutions are cached per target and database.
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::BytesMut;
use pgwire::messages::{
    DecodeContext, Message as _, PgWireBackendMessage, ProtocolVersion,
    extendedquery::{Describe, Parse, Sync as SyncMessage},
    simplequery::Query,
};
use tokio::io::AsyncWriteExt as _;

use super::{
    frame::{self, MAX_MESSAGE},
    rows::{Column, UNRESOLVED},
    upstream::{self, Upstream, UpstreamSettings},
};

/// How long a table's column names are trusted before they are asked again
/// (a column renamed behind loopgate's back is picked up within this time).
const TTL: Duration = Duration::from_secs(60);

/// A table's name and its columns by attribute number.
#[derive(Debug)]
pub struct TableInfo {
    pub name: String,
    pub columns: HashMap<i16, String>,
    fetched: Instant,
}

/// Per-target cache: database → table OID → table.
#[derive(Default)]
pub struct TableCache {
    databases: Mutex<HashMap<String, HashMap<u32, Arc<TableInfo>>>>,
}

impl TableCache {
    fn get(&self, database: &str, oid: u32) -> Option<Arc<TableInfo>> {
        let databases = self.databases.lock().unwrap_or_else(|p| p.into_inner());
        databases
            .get(database)?
            .get(&oid)
            .filter(|t| t.fetched.elapsed() < TTL)
            .cloned()
    }

    fn put(&self, database: &str, oid: u32, table: TableInfo) {
        let mut databases = self.databases.lock().unwrap_or_else(|p| p.into_inner());
        databases
            .entry(database.to_owned())
            .or_default()
            .insert(oid, Arc::new(table));
    }
}

/// One column of a described result.
#[derive(Clone, Debug)]
pub struct Field {
    pub name: String,
    pub table_oid: u32,
    pub attnum: i16,
    pub type_oid: u32,
}

impl Catalog {
    /// The real name and table of each described field; a field from a
    /// table that cannot be resolved is named [`UNRESOLVED`].
    pub async fn resolve(&mut self, cache: &TableCache, fields: &[(String, u32, i16)]) -> Vec<Column> {
        let mut oids: Vec<u32> = fields.iter().map(|f| f.1).filter(|o| *o != 0).collect();
        oids.sort_unstable();
        oids.dedup();
        let tables = if oids.is_empty() {
            HashMap::new()
        } else {
            self.tables(cache, &oids).await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot resolve result columns; masking them whole");
                HashMap::new()
            })
        };
        fields
            .iter()
            .map(|(name, oid, attnum)| {
                if *oid == 0 {
                    return Column {
                        name: name.clone(),
                        table: None,
                    };
                }
                match tables.get(oid).and_then(|t| Some((t, t.columns.get(attnum)?))) {
                    Some((t, column)) => Column {
                        name: column.clone(),
                        table: Some(t.name.clone()),
                    },
                    None => Column {
                        name: UNRESOLVED.to_owned(),
                        table: None,
                    },
                }
            })
            .collect()
    }
}

/// A session's side connection, opened on first need.
pub struct Catalog {
    addr: SocketAddr,
    server_name: String,
    settings: UpstreamSettings,
    parameters: Vec<(String, String)>,
    pub database: String,
    conn: Option<Upstream>,
}

impl Catalog {
    pub fn new(
        addr: SocketAddr,
        server_name: &str,
        settings: &UpstreamSettings,
        parameters: &[(String, String)],
    ) -> Catalog {
        let database = settings
            .database
            .clone()
            .or_else(|| parameters.iter().find(|(k, _)| k == "database").map(|(_, v)| v.clone()))
            .unwrap_or_else(|| settings.user.clone());
        let parameters = parameters
            .iter()
            .filter(|(k, _)| k == "database")
            .cloned()
            .chain([("application_name".to_owned(), "loopgate-catalog".to_owned())])
            .collect();
        Catalog {
            addr,
            server_name: server_name.to_owned(),
            settings: settings.clone(),
            parameters,
            database,
            conn: None,
        }
    }

    /// Tables for `oids`, from `cache` or asked now.
    pub async fn tables(&mut self, cache: &TableCache, oids: &[u32]) -> Result<HashMap<u32, Arc<TableInfo>>, String> {
        let mut found = HashMap::new();
        let mut missing = Vec::new();
        for &oid in oids {
            match cache.get(&self.database, oid) {
                Some(t) => {
                    found.insert(oid, t);
                }
                None if !missing.contains(&oid) => missing.push(oid),
                None => {}
            }
        }
        if missing.is_empty() {
            return Ok(found);
        }
        let list = missing.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
        let sql = format!(
            "SELECT a.attrelid, c.relname, a.attnum, a.attname FROM pg_catalog.pg_attribute a \
             JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
             WHERE a.attnum <> 0 AND NOT a.attisdropped AND a.attrelid IN ({list})"
        );
        let rows = self.query(&sql).await?;
        let mut fetched: HashMap<u32, TableInfo> = HashMap::new();
        for row in rows {
            let [oid, table, attnum, column] =
                <[String; 4]>::try_from(row).map_err(|_| "unexpected catalog row".to_owned())?;
            let (Ok(oid), Ok(attnum)) = (oid.parse::<u32>(), attnum.parse::<i16>()) else {
                return Err("unexpected catalog row".into());
            };
            let entry = fetched.entry(oid).or_insert_with(|| TableInfo {
                name: table,
                columns: HashMap::new(),
                fetched: Instant::now(),
            });
            entry.columns.insert(attnum, column);
        }
        for (oid, table) in fetched {
            cache.put(&self.database, oid, table);
            if let Some(t) = cache.get(&self.database, oid) {
                found.insert(oid, t);
            }
        }
        Ok(found)
    }

    /// The result columns of `sql`, without running it (Parse + Describe).
    pub async fn describe(&mut self, sql: &str) -> Result<Vec<Field>, String> {
        let mut out = BytesMut::new();
        let encoded = Parse::new(None, sql.to_owned(), Vec::new())
            .encode(&mut out)
            .and_then(|()| Describe::new(b'S', None).encode(&mut out))
            .and_then(|()| SyncMessage::new().encode(&mut out));
        encoded.map_err(|e| e.to_string())?;
        let conn = self.connect().await?;
        conn.stream.write_all(&out).await.map_err(|e| e.to_string())?;
        let mut fields = Vec::new();
        let mut error = None;
        loop {
            match read(conn).await? {
                PgWireBackendMessage::RowDescription(d) => {
                    fields = d
                        .fields
                        .into_iter()
                        .map(|f| Field {
                            name: f.name,
                            table_oid: f.table_id as u32,
                            attnum: f.column_id,
                            type_oid: f.type_id,
                        })
                        .collect();
                }
                PgWireBackendMessage::ErrorResponse(e) => {
                    error = Some(sqlstate_of(&e.fields));
                }
                PgWireBackendMessage::ReadyForQuery(_) => break,
                _ => {}
            }
        }
        match error {
            Some(code) => Err(format!("the server could not describe the query (SQLSTATE {code})")),
            None => Ok(fields),
        }
    }

    /// Runs a catalog query; every value as text.
    async fn query(&mut self, sql: &str) -> Result<Vec<Vec<String>>, String> {
        let mut out = BytesMut::new();
        Query::new(sql.to_owned()).encode(&mut out).map_err(|e| e.to_string())?;
        let conn = self.connect().await?;
        conn.stream.write_all(&out).await.map_err(|e| e.to_string())?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match read(conn).await? {
                PgWireBackendMessage::DataRow(row) => rows.push(text_fields(&row.data, row.field_count)?),
                PgWireBackendMessage::ErrorResponse(e) => error = Some(sqlstate_of(&e.fields)),
                PgWireBackendMessage::ReadyForQuery(_) => break,
                _ => {}
            }
        }
        match error {
            Some(code) => Err(format!("catalog query failed (SQLSTATE {code})")),
            None => Ok(rows),
        }
    }

    async fn connect(&mut self) -> Result<&mut Upstream, String> {
        if self.conn.is_none() {
            let conn = tokio::time::timeout(
                Duration::from_secs(10),
                upstream::connect(self.addr, &self.server_name, &self.settings, &self.parameters),
            )
            .await
            .map_err(|_| "catalog connection timed out".to_owned())?
            .map_err(|e| e.to_string())?;
            self.conn = Some(conn);
        }
        self.conn.as_mut().ok_or_else(|| "no catalog connection".to_owned())
    }
}

async fn read(conn: &mut Upstream) -> Result<PgWireBackendMessage, String> {
    let frame = frame::read_backend(&mut conn.stream, &mut conn.leftover, MAX_MESSAGE)
        .await
        .map_err(|e| e.to_string())?;
    frame::decode(frame, &DecodeContext::new(ProtocolVersion::PROTOCOL3_0)).map_err(|e| e.to_string())
}

fn sqlstate_of(fields: &[(u8, String)]) -> String {
    fields
        .iter()
        .find(|(c, _)| *c == b'C')
        .map_or_else(|| "?".to_owned(), |(_, v)| v.clone())
}

/// The values of a text-format DataRow body (NULL as empty).
fn text_fields(data: &[u8], count: i16) -> Result<Vec<String>, String> {
    let mut body = data;
    let mut out = Vec::with_capacity(count.max(0) as usize);
    for _ in 0..count.max(0) {
        let len = frame::take_i32(&mut body).ok_or("truncated catalog row")?;
        if len < 0 {
            out.push(String::new());
            continue;
        }
        let len = len as usize;
        if body.len() < len {
            return Err("truncated catalog row".into());
        }
        let (v, rest) = body.split_at(len);
        out.push(String::from_utf8_lossy(v).into_owned());
        body = rest;
    }
    Ok(out)
}
