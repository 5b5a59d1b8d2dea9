/* Snapshots: the latest state of a stream at a version, one row per
 * stream, with the schema version of the state's format. An older
 * snapshot never replaces a newer one (writers may race). */
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "es/es_int.h"

int tl_es_snapshot_save(tl_es *es, const char *stream, int64_t version, int schema_version,
                        const char *state)
{
  if (!es || !stream || !*stream || !state || version < 0)
    return tl_error_set(TL_EINVAL, "snapshot: missing argument");
  json_t *j = json_loads(state, JSON_DECODE_ANY, NULL);
  if (!j) return tl_error_set(TL_EINVAL, "snapshot '%s': state is not JSON", stream);
  json_decref(j);
  const char *sql = es->dialect == TL_DB_MYSQL
    ? "INSERT INTO trellis_es_snapshots (stream, version, schema_version, state, created_us) "
      "VALUES ($1, $2, $3, $4, $5) ON DUPLICATE KEY UPDATE "
      "state = IF(VALUES(version) >= version, VALUES(state), state), "
      "schema_version = IF(VALUES(version) >= version, VALUES(schema_version), schema_version), "
      "created_us = IF(VALUES(version) >= version, VALUES(created_us), created_us), "
      "version = IF(VALUES(version) >= version, VALUES(version), version)"
    : "INSERT INTO trellis_es_snapshots (stream, version, schema_version, state, created_us) "
      "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (stream) DO UPDATE SET version = excluded.version, "
      "schema_version = excluded.schema_version, state = excluded.state, "
      "created_us = excluded.created_us WHERE excluded.version >= trellis_es_snapshots.version";
  return tl_db_exec(es->db, NULL, sql,
                    TL_ARGS(tl_text(stream), tl_int(version),
                            tl_int(schema_version > 0 ? schema_version : 1), tl_json(state),
                            tl_int(tl_time_now_us())));
}

int tl_es_snapshot_load(tl_es *es, const char *stream, tl_es_snapshot *out)
{
  if (!es || !stream || !out) return tl_error_set(TL_EINVAL, "snapshot: missing argument");
  memset(out, 0, sizeof *out);
  tl_rows *r;
  int rc = tl_db_query(es->db, &r, "SELECT version, schema_version, state, created_us "
                       "FROM trellis_es_snapshots WHERE stream = $1", TL_ARGS(tl_text(stream)));
  if (rc) return rc;
  rc = tl_rows_next(r);
  if (rc == 1) {
    int64_t sv = 1;
    const char *s = NULL;
    size_t len = 0;
    tl_rows_int(r, 0, &out->version);
    tl_rows_int(r, 1, &sv);
    tl_rows_text(r, 2, &s, &len);
    tl_rows_int(r, 3, &out->created_us);
    out->schema_version = (int)sv;
    out->state = s ? strndup(s, len) : NULL;
    rc = out->state ? 0 : tl_error_set(TL_ENOMEM, "snapshot: out of memory");
  } else if (rc == 0) {
    rc = tl_error_set(TL_ENOTFOUND, "no snapshot of stream '%s'", stream);
  }
  tl_rows_free(r);
  return rc;
}

void tl_es_snapshot_free(tl_es_snapshot *snap)
{
  if (!snap) return;
  free(snap->state);
  snap->state = NULL;
}
