/* The result cursor: one per connection at a time, embedded in it, so a
 * query allocates nothing. */
#include <string.h>
#include <strings.h>

#include "db/db_int.h"

int tl_rows_next(tl_rows *r)
{
  if (!r || !r->open) return tl_error_set(TL_EINVAL, "tl_rows_next: no open result");
  if (r->state == 2) return 0;
  int rc = r->conn->be->next(r);
  if (rc == 1) {
    r->state = 1;
    return 1;
  }
  r->state = 2;
  if (rc < 0) {
    tl__conn_failed(r->conn, rc);
    if (r->tx && tl_db_error_last_class() != TL_DB_ERR_NONE) r->tx->failed = true;
  }
  return rc;
}

int tl_rows_column_count(const tl_rows *r)
{
  return r && r->open && r->st->ncols > 0 ? r->st->ncols : 0;
}

static bool col_ok(const tl_rows *r, int col)
{
  return r && r->open && col >= 0 && col < r->st->ncols;
}

const char *tl_rows_column_name(const tl_rows *r, int col)
{
  return col_ok(r, col) ? r->st->colnames[col] : NULL;
}

tl_type tl_rows_column_type(const tl_rows *r, int col)
{
  if (!col_ok(r, col)) return TL_TYPE_NULL;
  tl_type t = r->st->coltypes[col];
  if (t == TL_TYPE_NULL && r->state == 1) {
    tl_value v;
    if (r->conn->be->get((tl_rows *)r, col, &v) == 0) t = v.type;
  }
  return t;
}

int tl_rows_column_index(const tl_rows *r, const char *name)
{
  if (!r || !r->open || !name) return TL_EINVAL;
  for (int i = 0; i < r->st->ncols; i++)
    if (strcmp(r->st->colnames[i], name) == 0) return i;
  for (int i = 0; i < r->st->ncols; i++)
    if (strcasecmp(r->st->colnames[i], name) == 0) return i;
  return tl_error_set(TL_ENOTFOUND, "no column '%s' in the result", name);
}

int tl_rows_get(tl_rows *r, int col, tl_value *out)
{
  if (!col_ok(r, col) || r->state != 1 || !out)
    return tl_error_set(TL_EINVAL, "tl_rows_get: %s",
                        !r || !r->open ? "no open result"
                        : r->state != 1 ? "no current row (call tl_rows_next)"
                                        : "column index out of range");
  return r->conn->be->get(r, col, out);
}

int tl_rows_get_named(tl_rows *r, const char *name, tl_value *out)
{
  int col = tl_rows_column_index(r, name);
  return col < 0 ? col : tl_rows_get(r, col, out);
}

bool tl_rows_is_null(tl_rows *r, int col)
{
  tl_value v;
  return col_ok(r, col) && r->state == 1 && r->conn->be->get(r, col, &v) == 0 &&
         v.type == TL_TYPE_NULL;
}

static int get_as(tl_rows *r, int col, tl_type want, tl_value *out)
{
  tl_value v;
  int rc = tl_rows_get(r, col, &v);
  if (rc != 0) return rc;
  rc = tl__value_convert(&v, want, out);
  if (rc == TL_ENOTFOUND)
    return tl_error_set(rc, "column '%s' is null", r->st->colnames[col]);
  if (rc != 0)
    return tl_error_set(rc, "column '%s': a %s value does not convert to %s",
                        r->st->colnames[col], tl_type_name(v.type), tl_type_name(want));
  return 0;
}

int tl_rows_int(tl_rows *r, int col, int64_t *out)
{
  tl_value v;
  int rc = get_as(r, col, TL_TYPE_INT, &v);
  if (rc == 0) *out = v.i;
  return rc;
}

int tl_rows_double(tl_rows *r, int col, double *out)
{
  tl_value v;
  int rc = get_as(r, col, TL_TYPE_DOUBLE, &v);
  if (rc == 0) *out = v.d;
  return rc;
}

int tl_rows_bool(tl_rows *r, int col, bool *out)
{
  tl_value v;
  int rc = get_as(r, col, TL_TYPE_BOOL, &v);
  if (rc == 0) *out = v.b;
  return rc;
}

int tl_rows_text(tl_rows *r, int col, const char **out, size_t *len)
{
  tl_value v;
  int rc = get_as(r, col, TL_TYPE_TEXT, &v);
  if (rc == 0) {
    *out = v.s;
    if (len) *len = v.len;
  }
  return rc;
}

int tl_rows_blob(tl_rows *r, int col, const void **out, size_t *len)
{
  tl_value v;
  int rc = get_as(r, col, TL_TYPE_BLOB, &v);
  if (rc == 0) {
    *out = v.p;
    if (len) *len = v.len;
  }
  return rc;
}

int tl_rows_timestamp(tl_rows *r, int col, int64_t *out)
{
  tl_value v;
  int rc = get_as(r, col, TL_TYPE_TIMESTAMP, &v);
  if (rc == 0) *out = v.i;
  return rc;
}

void tl_rows_free(tl_rows *r)
{
  if (!r || !r->open) return;
  r->conn->be->rows_close(r);
  r->open = false;
  if (r->release_to) {
    tl_pool *p = r->release_to;
    r->release_to = NULL;
    tl_pool_put(p, r->conn);
  }
}
