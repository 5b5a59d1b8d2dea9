/* The MongoDB document API against a real server: insert, find (filter,
 * projection, sort, limit), update, delete, count, errors and
 * transactions. No MongoDB server is packaged for these machines: without
 * MONGODB_URI every test is skipped, and says so. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include <trellis/db.h>
#include <trellis/error.h>
#include <trellis/trellis.h>

static const char *uri;
static tl_db *db;
static char coll[64];

static int setup(void **state)
{
  (void)state;
  uri = getenv("MONGODB_URI");
  if (!uri || !*uri) return 0;
  tl_db_config cfg = { .url = uri, .max_connections = 4 };
  if (tl_db_connect(&db, &cfg) != 0) {
    fprintf(stderr, "MONGODB_URI is set but: %s\n", tl_error_last());
    return -1;
  }
  snprintf(coll, sizeof coll, "trellis_test_%d", (int)getpid());
  return 0;
}

static int teardown(void **state)
{
  (void)state;
  if (db) tl_doc_delete(db, NULL, coll, "{}", true, NULL);
  tl_db_close(db);
  return 0;
}

#define NEED_SERVER()                                                         \
  do {                                                                        \
    if (!db) {                                                                \
      fprintf(stderr, "skipped: MONGODB_URI is not set (no MongoDB server)\n"); \
      skip();                                                                 \
    }                                                                         \
  } while (0)

static void crud(void **state)
{
  (void)state;
  NEED_SERVER();
  assert_int_equal(tl_doc_delete(db, NULL, coll, "{}", true, NULL), 0);
  char *id = NULL;
  assert_int_equal(tl_doc_insert(db, NULL, coll, "{\"name\":\"ann\",\"age\":31,\"tags\":[\"a\"]}", &id), 0);
  assert_non_null(strstr(id, "$oid"));
  tl_free(id);
  assert_int_equal(tl_doc_insert(db, NULL, coll, "{\"_id\":\"bob\",\"name\":\"bob\",\"age\":25}", &id), 0);
  assert_string_equal(id, "\"bob\"");
  tl_free(id);
  assert_int_equal(tl_doc_insert(db, NULL, coll, "{\"_id\":\"bob\"}", NULL), TL_ECONFLICT);
  assert_int_equal(tl_db_error_last_class(), TL_DB_ERR_UNIQUE);
  assert_int_equal(tl_doc_insert(db, NULL, coll, "{\"name\":\"cy\",\"age\":{\"$numberLong\":\"40\"}}", NULL), 0);
  int64_t n;
  assert_int_equal(tl_doc_count(db, NULL, coll, "{\"age\":{\"$gte\":30}}", &n), 0);
  assert_int_equal(n, 2);
  tl_doc_find_opts fo = { .projection = "{\"_id\":0,\"name\":1}", .sort = "{\"age\":-1}", .limit = 2 };
  tl_doc_cursor *cur;
  assert_int_equal(tl_doc_find(db, NULL, coll, NULL, &fo, &cur), 0);
  const char *json;
  assert_int_equal(tl_doc_cursor_next(cur, &json), 1);
  assert_string_equal(json, "{ \"name\" : \"cy\" }");
  assert_int_equal(tl_doc_cursor_next(cur, &json), 1);
  assert_string_equal(json, "{ \"name\" : \"ann\" }");
  assert_int_equal(tl_doc_cursor_next(cur, &json), 0);
  tl_doc_cursor_free(cur);
  assert_int_equal(tl_doc_update(db, NULL, coll, "{\"age\":{\"$lt\":100}}", "{\"$inc\":{\"age\":1}}", true, false, &n), 0);
  assert_int_equal(n, 3);
  assert_int_equal(tl_doc_update(db, NULL, coll, "{\"name\":\"dee\"}", "{\"$set\":{\"age\":1}}", false, true, &n), 0);
  assert_int_equal(n, 1);
  assert_int_equal(tl_doc_delete(db, NULL, coll, "{\"age\":{\"$gt\":30}}", true, &n), 0);
  assert_int_equal(n, 2);
  assert_int_equal(tl_doc_count(db, NULL, coll, NULL, &n), 0);
  assert_int_equal(n, 2);
  assert_int_equal(tl_doc_find(db, NULL, coll, "{\"a\":", NULL, &cur), TL_EPROTO);
  assert_int_equal(tl_db_exec(db, NULL, "SELECT 1", TL_NOARGS), TL_EUNSUPP);
}

static int tx_fn(tl_tx *tx, void *ctx)
{
  (void)ctx;
  return tl_doc_insert(db, tx, coll, "{\"_id\":\"in-tx\"}", NULL);
}

static void transactions(void **state)
{
  (void)state;
  NEED_SERVER();
  tl_tx *tx;
  int rc = tl_db_begin(db, &tx);
  assert_int_equal(rc, 0);
  rc = tl_doc_insert(db, tx, coll, "{\"_id\":\"rolled-back\"}", NULL);
  if (rc != 0 && strstr(tl_error_last(), "replica set")) {
    tl_tx_rollback(tx);
    fprintf(stderr, "skipped: transactions need a replica set (%s)\n", tl_error_last());
    skip();
  }
  assert_int_equal(rc, 0);
  assert_int_equal(tl_tx_rollback(tx), 0);
  int64_t n;
  assert_int_equal(tl_doc_count(db, NULL, coll, "{\"_id\":\"rolled-back\"}", &n), 0);
  assert_int_equal(n, 0);
  assert_int_equal(tl_db_transact(db, tx_fn, NULL, NULL), 0);
  assert_int_equal(tl_doc_count(db, NULL, coll, "{\"_id\":\"in-tx\"}", &n), 0);
  assert_int_equal(n, 1);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(crud),
    cmocka_unit_test(transactions),
  };
  return cmocka_run_group_tests_name("db_mongo", tests, setup, teardown);
}
