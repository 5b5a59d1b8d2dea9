/* The event store's schema, one text per SQL dialect.
 *
 * Global order: every event has (tx, position) and the log is read in
 * that order. SQLite has one writer at a time (BEGIN IMMEDIATE), so an
 * AUTOINCREMENT position commits in order and tx is 0. MariaDB/MySQL take
 * positions from a one-row counter locked FOR UPDATE inside the appending
 * transaction, so they commit in order too, and tx is 0. PostgreSQL lets
 * writers run in parallel: position comes from a sequence (which may
 * commit out of order) and tx is the writer's transaction id; readers only
 * return events whose tx is below the oldest transaction still running
 * (pg_snapshot_xmin), so nothing can later appear before what they saw.
 * docs/event-sourcing.md has the argument in full. */
#include "es/es_int.h"

static const tl_migration es_migrations[] = {
  { .version = 1, .name = "event store",
    .sql_sqlite =
      "CREATE TABLE trellis_es_events ("
      " position INTEGER PRIMARY KEY AUTOINCREMENT,"
      " tx INTEGER NOT NULL DEFAULT 0,"
      " id TEXT NOT NULL UNIQUE,"
      " stream TEXT NOT NULL, category TEXT NOT NULL, type TEXT NOT NULL,"
      " version INTEGER NOT NULL, data TEXT NOT NULL, metadata TEXT NOT NULL,"
      " schema_version INTEGER NOT NULL, created_us INTEGER NOT NULL,"
      " UNIQUE (stream, version));"
      "CREATE INDEX trellis_es_events_category ON trellis_es_events (category, position);"
      "CREATE TABLE trellis_es_streams ("
      " stream TEXT PRIMARY KEY, version INTEGER NOT NULL DEFAULT 0,"
      " deleted INTEGER NOT NULL DEFAULT 0, truncate_before INTEGER NOT NULL DEFAULT 0,"
      " metadata TEXT);"
      "CREATE TABLE trellis_es_snapshots ("
      " stream TEXT PRIMARY KEY, version INTEGER NOT NULL, schema_version INTEGER NOT NULL,"
      " state TEXT NOT NULL, created_us INTEGER NOT NULL);"
      "CREATE TABLE trellis_es_subscriptions ("
      " name TEXT PRIMARY KEY, tx INTEGER NOT NULL DEFAULT 0,"
      " position INTEGER NOT NULL DEFAULT 0, owner TEXT, lease_until INTEGER NOT NULL DEFAULT 0,"
      " updated_us INTEGER NOT NULL DEFAULT 0)",
    .sql_postgres =
      "CREATE TABLE trellis_es_events ("
      " position BIGSERIAL PRIMARY KEY,"
      " tx BIGINT NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),"
      " id VARCHAR(64) NOT NULL UNIQUE,"
      " stream VARCHAR(200) NOT NULL, category VARCHAR(200) NOT NULL, type VARCHAR(200) NOT NULL,"
      " version BIGINT NOT NULL, data JSON NOT NULL, metadata JSON NOT NULL,"
      " schema_version INT NOT NULL, created_us BIGINT NOT NULL,"
      " UNIQUE (stream, version));"
      "CREATE INDEX trellis_es_events_order ON trellis_es_events (tx, position);"
      "CREATE INDEX trellis_es_events_category ON trellis_es_events (category, tx, position);"
      "CREATE TABLE trellis_es_streams ("
      " stream VARCHAR(200) PRIMARY KEY, version BIGINT NOT NULL DEFAULT 0,"
      " deleted INT NOT NULL DEFAULT 0, truncate_before BIGINT NOT NULL DEFAULT 0,"
      " metadata JSON);"
      "CREATE TABLE trellis_es_snapshots ("
      " stream VARCHAR(200) PRIMARY KEY, version BIGINT NOT NULL, schema_version INT NOT NULL,"
      " state JSON NOT NULL, created_us BIGINT NOT NULL);"
      "CREATE TABLE trellis_es_subscriptions ("
      " name VARCHAR(200) PRIMARY KEY, tx BIGINT NOT NULL DEFAULT 0,"
      " position BIGINT NOT NULL DEFAULT 0, owner VARCHAR(200), lease_until BIGINT NOT NULL DEFAULT 0,"
      " updated_us BIGINT NOT NULL DEFAULT 0)",
    .sql_mysql =
      "CREATE TABLE trellis_es_events ("
      " position BIGINT PRIMARY KEY,"
      " tx BIGINT NOT NULL DEFAULT 0,"
      " id VARCHAR(64) NOT NULL UNIQUE,"
      " stream VARCHAR(200) NOT NULL, category VARCHAR(200) NOT NULL, type VARCHAR(200) NOT NULL,"
      " version BIGINT NOT NULL, data LONGTEXT NOT NULL, metadata LONGTEXT NOT NULL,"
      " schema_version INT NOT NULL, created_us BIGINT NOT NULL,"
      " UNIQUE KEY trellis_es_events_stream (stream, version),"
      " KEY trellis_es_events_category (category, position)"
      ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;"
      "CREATE TABLE trellis_es_counter (id INT PRIMARY KEY, position BIGINT NOT NULL)"
      " ENGINE=InnoDB;"
      "INSERT INTO trellis_es_counter (id, position) VALUES (1, 0);"
      "CREATE TABLE trellis_es_streams ("
      " stream VARCHAR(200) PRIMARY KEY, version BIGINT NOT NULL DEFAULT 0,"
      " deleted INT NOT NULL DEFAULT 0, truncate_before BIGINT NOT NULL DEFAULT 0,"
      " metadata LONGTEXT) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;"
      "CREATE TABLE trellis_es_snapshots ("
      " stream VARCHAR(200) PRIMARY KEY, version BIGINT NOT NULL, schema_version INT NOT NULL,"
      " state LONGTEXT NOT NULL, created_us BIGINT NOT NULL)"
      " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;"
      "CREATE TABLE trellis_es_subscriptions ("
      " name VARCHAR(200) PRIMARY KEY, tx BIGINT NOT NULL DEFAULT 0,"
      " position BIGINT NOT NULL DEFAULT 0, owner VARCHAR(200), lease_until BIGINT NOT NULL DEFAULT 0,"
      " updated_us BIGINT NOT NULL DEFAULT 0) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin" },
  /* PostgreSQL subscribers sleep on LISTEN trellis_es. Version 2 notified
   * from a trigger; version 3 removes it (see wake.c). */
  { .version = 2, .name = "notify subscribers on append",
    .sql = "SELECT 1",
    .sql_postgres =
      "CREATE FUNCTION trellis_es_notify() RETURNS trigger LANGUAGE plpgsql AS $$"
      " BEGIN PERFORM pg_notify('trellis_es', ''); RETURN NULL; END $$;"
      "CREATE TRIGGER trellis_es_events_notify AFTER INSERT ON trellis_es_events"
      " FOR EACH STATEMENT EXECUTE FUNCTION trellis_es_notify()" },
  /* A NOTIFY in the appending transaction makes PostgreSQL run those
   * commits one at a time; appends notify after their commit instead. */
  { .version = 3, .name = "notify subscribers after the commit",
    .sql = "SELECT 1",
    .sql_postgres =
      "DROP TRIGGER IF EXISTS trellis_es_events_notify ON trellis_es_events;"
      "DROP FUNCTION IF EXISTS trellis_es_notify()" },
};

int tl__es_schema_register(void)
{
  return tl_db_migrations_register("trellis_es", es_migrations,
                                   sizeof es_migrations / sizeof es_migrations[0]);
}
