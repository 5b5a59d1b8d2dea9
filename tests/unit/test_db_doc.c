/* The JSON <-> BSON mapping of the MongoDB document API (no server): what
 * types JSON text becomes, and that documents come back as they went in. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <bson/bson.h>
#include <jansson.h>

#include "db/db_int.h"
#include "trellis/trellis.h"

static bson_t *to_bson(const char *json)
{
  void *b = NULL;
  int rc = tl__doc_from_json(json, "the document", &b);
  if (rc) fail_msg("'%s': %s", json, tl_error_last());
  return b;
}

static bson_type_t type_at(const bson_t *b, const char *path)
{
  bson_iter_t it, found;
  assert_true(bson_iter_init(&it, b));
  if (!bson_iter_find_descendant(&it, path, &found)) fail_msg("no '%s'", path);
  return bson_iter_type(&found);
}

static void same_json(const char *a, const char *b)
{
  json_t *ja = json_loads(a, 0, NULL), *jb = json_loads(b, 0, NULL);
  assert_non_null(ja);
  assert_non_null(jb);
  if (!json_equal(ja, jb)) fail_msg("'%s' != '%s'", a, b);
  json_decref(ja);
  json_decref(jb);
}

static void plain_types(void **state)
{
  (void)state;
  const char *in = "{\"i\":1,\"big\":9007199254740993,\"neg\":-9223372036854775808,"
                   "\"d\":1.5,\"s\":\"h\\u00e9 \\\"q\\\"\\n\\u65e5\",\"t\":true,\"n\":null,"
                   "\"a\":[1,\"x\",{\"k\":[]}],\"o\":{\"p\":{\"q\":false}}}";
  bson_t *b = to_bson(in);
  assert_int_equal(type_at(b, "i"), BSON_TYPE_INT32);
  assert_int_equal(type_at(b, "big"), BSON_TYPE_INT64);
  assert_int_equal(type_at(b, "neg"), BSON_TYPE_INT64);
  assert_int_equal(type_at(b, "d"), BSON_TYPE_DOUBLE);
  assert_int_equal(type_at(b, "s"), BSON_TYPE_UTF8);
  assert_int_equal(type_at(b, "t"), BSON_TYPE_BOOL);
  assert_int_equal(type_at(b, "n"), BSON_TYPE_NULL);
  assert_int_equal(type_at(b, "a"), BSON_TYPE_ARRAY);
  assert_int_equal(type_at(b, "a.2.k"), BSON_TYPE_ARRAY);
  assert_int_equal(type_at(b, "o.p.q"), BSON_TYPE_BOOL);
  bson_iter_t it;
  assert_true(bson_iter_init_find(&it, b, "big"));
  assert_true(bson_iter_int64(&it) == 9007199254740993LL); /* beyond a double's precision */
  char *out = tl__doc_to_json(b);
  assert_non_null(out);
  same_json(out, in);
  assert_non_null(strstr(out, "9007199254740993"));
  tl_free(out);
  tl__doc_bson_free(b);
}

static void extended_json(void **state)
{
  (void)state;
  bson_t *b = to_bson("{\"_id\":{\"$oid\":\"65a1b2c3d4e5f60718293a4b\"},"
                      "\"n\":{\"$numberLong\":\"42\"},\"at\":{\"$date\":\"2026-01-01T00:00:00Z\"},"
                      "\"old\":{\"$date\":{\"$numberLong\":\"-14182939877\"}},"
                      "\"dec\":{\"$numberDecimal\":\"1.10\"},"
                      "\"bin\":{\"$binary\":{\"base64\":\"AAEC\",\"subType\":\"00\"}}}");
  assert_int_equal(type_at(b, "_id"), BSON_TYPE_OID);
  assert_int_equal(type_at(b, "n"), BSON_TYPE_INT64);
  assert_int_equal(type_at(b, "at"), BSON_TYPE_DATE_TIME);
  assert_int_equal(type_at(b, "old"), BSON_TYPE_DATE_TIME);
  assert_int_equal(type_at(b, "dec"), BSON_TYPE_DECIMAL128);
  assert_int_equal(type_at(b, "bin"), BSON_TYPE_BINARY);
  bson_iter_t it;
  assert_true(bson_iter_init_find(&it, b, "at"));
  assert_true(bson_iter_date_time(&it) == 1767225600000LL);
  assert_true(bson_iter_init_find(&it, b, "old"));
  assert_true(bson_iter_date_time(&it) == -14182939877LL); /* before 1970 */
  char *out = tl__doc_to_json(b);
  /* Relaxed output: OIDs and dates keep their wrappers, int64 is a number. */
  assert_non_null(strstr(out, "\"$oid\" : \"65a1b2c3d4e5f60718293a4b\""));
  assert_non_null(strstr(out, "\"n\" : 42"));
  assert_non_null(strstr(out, "\"$date\" : \"2026-01-01T00:00:00Z\""));
  assert_non_null(strstr(out, "\"$numberDecimal\" : \"1.10\""));
  /* ...and reads back to the same values; relaxed output turns a small
   * int64 into a plain number, which reads back as int32. */
  bson_t *again = to_bson(out);
  bson_iter_t a, z;
  assert_true(bson_iter_init(&a, b) && bson_iter_init(&z, again));
  while (bson_iter_next(&a)) {
    assert_true(bson_iter_next(&z));
    assert_string_equal(bson_iter_key(&a), bson_iter_key(&z));
    if (strcmp(bson_iter_key(&a), "n") == 0) {
      assert_int_equal(bson_iter_type(&z), BSON_TYPE_INT32);
      assert_int_equal(bson_iter_as_int64(&z), 42);
      continue;
    }
    assert_int_equal(bson_iter_type(&a), bson_iter_type(&z));
    const bson_value_t *va = bson_iter_value(&a), *vz = bson_iter_value(&z);
    bson_t da = BSON_INITIALIZER, dz = BSON_INITIALIZER;
    bson_append_value(&da, "v", 1, va);
    bson_append_value(&dz, "v", 1, vz);
    assert_true(bson_equal(&da, &dz));
    bson_destroy(&da);
    bson_destroy(&dz);
  }
  assert_false(bson_iter_next(&z));
  tl_free(out);
  tl__doc_bson_free(again);
  tl__doc_bson_free(b);
}

static void bad_json(void **state)
{
  (void)state;
  void *b = NULL;
  assert_int_equal(tl__doc_from_json("{\"a\":", "the filter", &b), TL_EPROTO);
  assert_non_null(strstr(tl_error_last(), "the filter"));
  assert_null(b);
  assert_int_equal(tl__doc_from_json("not json", "the update", &b), TL_EPROTO);
  assert_int_equal(tl__doc_from_json("{\"a\":1} trailing", "the document", &b), TL_EPROTO);
  bson_t *empty = to_bson("{}");
  char *out = tl__doc_to_json(empty);
  same_json(out, "{}");
  tl_free(out);
  tl__doc_bson_free(empty);
}

static void mongo_error_classes(void **state)
{
  (void)state;
  assert_int_equal(tl__class_from_mongo(11000), TL_DB_ERR_UNIQUE);
  assert_int_equal(tl__class_from_mongo(112), TL_DB_ERR_SERIALIZATION);
  assert_int_equal(tl__class_from_mongo(50), TL_DB_ERR_TIMEOUT);
  assert_int_equal(tl__class_from_mongo(121), TL_DB_ERR_CHECK);
  assert_int_equal(tl__class_from_mongo(91), TL_DB_ERR_CONNECTION_LOST);
  assert_int_equal(tl__class_from_mongo(4242), TL_DB_ERR_OTHER);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(plain_types),
    cmocka_unit_test(extended_json),
    cmocka_unit_test(bad_json),
    cmocka_unit_test(mongo_error_classes),
  };
  return cmocka_run_group_tests_name("db_doc", tests, NULL, NULL);
}
