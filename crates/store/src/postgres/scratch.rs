//! Scratch schemas for tests and benchmarks: a fresh, empty schema in an existing database,
//! addressed by a connection string whose every connection uses it. Names carry their
//! creation time, so leftovers of interrupted runs are dropped after an hour.

use crate::StoreError;

/// Leftover scratch schemas older than this are dropped when a new one is made.
const LEFTOVER_AGE_SECS: u64 = 3600;

/// `url` with `search_path` set to `schema` for every connection (URL or key=value form).
pub fn with_search_path(url: &str, schema: &str) -> String {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let separator = if url.contains('?') { '&' } else { '?' };
        format!("{url}{separator}options=-c%20search_path%3D{schema}")
    } else {
        format!("{url} options='-c search_path={schema}'")
    }
}

async fn connect(base_url: &str) -> Result<tokio_postgres::Client, StoreError> {
    let (client, connection) = tokio_postgres::connect(base_url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// Creates `{prefix}_{unix seconds}_{random}` in the database at `base_url` and returns its
/// name and the connection string that uses it. Schemas with the same prefix older than an
/// hour are dropped first.
pub async fn create(base_url: &str, prefix: &str) -> Result<(String, String), StoreError> {
    let client = connect(base_url).await?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let pattern = format!("{}\\_%", prefix.replace('_', "\\_"));
    for row in client.query("SELECT nspname FROM pg_namespace WHERE nspname LIKE $1", &[&pattern]).await? {
        let name: String = row.get(0);
        let created: u64 =
            name.strip_prefix(prefix).and_then(|r| r.split('_').nth(1)).and_then(|t| t.parse().ok()).unwrap_or(0);
        if created + LEFTOVER_AGE_SECS < now {
            let _ = client.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE")).await;
        }
    }
    let schema = format!("{prefix}_{now}_{}", rand::random::<u32>());
    client.batch_execute(&format!("CREATE SCHEMA {schema}")).await?;
    let url = with_search_path(base_url, &schema);
    Ok((schema, url))
}

/// Drops a scratch schema and everything in it.
pub async fn drop(base_url: &str, schema: &str) -> Result<(), StoreError> {
    connect(base_url).await?.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_search_path_rides_along_in_both_connection_string_forms() {
        assert_eq!(with_search_path("postgres://u@h/db", "s1"), "postgres://u@h/db?options=-c%20search_path%3Ds1");
        assert_eq!(
            with_search_path("postgres://u@h/db?sslmode=disable", "s1"),
            "postgres://u@h/db?sslmode=disable&options=-c%20search_path%3Ds1"
        );
        assert_eq!(with_search_path("host=h user=u", "s1"), "host=h user=u options='-c search_path=s1'");
    }
}
