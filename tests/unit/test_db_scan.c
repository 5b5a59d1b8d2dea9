/* Unit tests of the database front end that need no database: the $n
 * scanner and translator, statement splitting, URL parsing with masked
 * passwords, value conversions and timestamp text. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "db/db_int.h"

static void translate_ok(tl_db_dialect d, const char *in, const char *want, int nparams)
{
  char *out = NULL;
  uint16_t *map = NULL;
  int np = -1, nrefs = -1;
  int rc = tl__sql_translate(d, in, strlen(in), &out, &np, &map, &nrefs);
  if (rc != 0) fail_msg("translate '%s': %s", in, tl_error_last());
  if (strcmp(out, want) != 0) fail_msg("translate '%s'\n got '%s'\nwant '%s'", in, out, want);
  assert_int_equal(np, nparams);
  free(out);
  free(map);
}

static void pg_keeps_and_skips(void **state)
{
  (void)state;
  tl_db_dialect pg = TL_DB_POSTGRES;
  translate_ok(pg, "SELECT $1::int, $2::text[]", "SELECT $1::int, $2::text[]", 2);
  translate_ok(pg, "SELECT '$5', \"$6\", $1 -- $7\n/* $8 /* $9 */ $10 */", "SELECT '$5', \"$6\", $1 -- $7\n/* $8 /* $9 */ $10 */", 1);
  translate_ok(pg, "SELECT $$ $4 $$, $tag$ $5 ' $tag$, $1", "SELECT $$ $4 $$, $tag$ $5 ' $tag$, $1", 1);
  translate_ok(pg, "SELECT E'\\' $3', $1", "SELECT E'\\' $3', $1", 1);
  translate_ok(pg, "SELECT 'it''s $3', $2", "SELECT 'it''s $3', $2", 2);
  translate_ok(pg, "SELECT a$1 FROM t WHERE j ? 'k'", "SELECT a$1 FROM t WHERE j ? 'k'", 0);
  translate_ok(pg, "SELECT $1, $1, $3", "SELECT $1, $1, $3", 3);
}

static void mysql_maps_to_qmarks(void **state)
{
  (void)state;
  const char *in = "SELECT $2, '$1 \\' $1', `$1`, \"$1\", $1 # $3\n, $2 -- $4\n, 5--$1";
  char *out;
  uint16_t *map;
  int np, nrefs;
  assert_int_equal(tl__sql_translate(TL_DB_MYSQL, in, strlen(in), &out, &np, &map, &nrefs), 0);
  assert_string_equal(out, "SELECT ?, '$1 \\' $1', `$1`, \"$1\", ? # $3\n, ? -- $4\n, 5--?");
  assert_int_equal(np, 2);
  assert_int_equal(nrefs, 4);
  uint16_t want[] = { 1, 0, 1, 0 };
  assert_memory_equal(map, want, sizeof want);
  free(out);
  free(map);
  /* No dollar quoting in MySQL: $$ is just text. */
  translate_ok(TL_DB_MYSQL, "SELECT '$$', $1", "SELECT '$$', ?", 1);
}

static void sqlite_positional(void **state)
{
  (void)state;
  translate_ok(TL_DB_SQLITE, "SELECT $2, $1, $12, [$3], '$4'", "SELECT ?2, ?1, ?12, [$3], '$4'", 12);
  translate_ok(TL_DB_SQLITE, "SELECT 'a?b', \"c?\" -- ?\n", "SELECT 'a?b', \"c?\" -- ?\n", 0);
}

static void errors(void **state)
{
  (void)state;
  char *out;
  uint16_t *map;
  int np, nrefs;
  assert_int_equal(tl__sql_translate(TL_DB_SQLITE, "SELECT ?", 8, &out, &np, &map, &nrefs), TL_EINVAL);
  assert_non_null(strstr(tl_error_last(), "'?'"));
  assert_int_equal(tl__sql_translate(TL_DB_MYSQL, "SELECT $0", 9, &out, &np, &map, &nrefs), TL_EINVAL);
  assert_int_equal(tl__sql_translate(TL_DB_POSTGRES, "SELECT $70000", 13, &out, &np, &map, &nrefs), TL_EINVAL);
  /* Unterminated literals run to the end without crashing. */
  translate_ok(TL_DB_POSTGRES, "SELECT '$1", "SELECT '$1", 0);
  translate_ok(TL_DB_POSTGRES, "SELECT $$ $1", "SELECT $$ $1", 0);
  translate_ok(TL_DB_MYSQL, "SELECT /* $1", "SELECT /* $1", 0);
}

static int collect(const char *s, size_t n, void *ctx)
{
  char *acc = ctx;
  strncat(acc, s, n);
  strcat(acc, "|");
  return 0;
}

static void split(void **state)
{
  (void)state;
  char acc[512] = "";
  tl__sql_split(TL_DB_POSTGRES,
                "CREATE FUNCTION f() RETURNS int AS $$ BEGIN RETURN 1; END $$ LANGUAGE plpgsql;"
                " INSERT INTO t VALUES ('a;b'); -- c;d\n ; ;/* x; */", collect, acc);
  assert_string_equal(acc, "CREATE FUNCTION f() RETURNS int AS $$ BEGIN RETURN 1; END $$ LANGUAGE plpgsql|"
                           " INSERT INTO t VALUES ('a;b')|");
  acc[0] = '\0';
  tl__sql_split(TL_DB_MYSQL, "SELECT 1 # x;\n; SELECT 'x\\';'", collect, acc);
  assert_string_equal(acc, "SELECT 1 # x;\n| SELECT 'x\\';'|");
}

static void urls(void **state)
{
  (void)state;
  tl__url u;
  assert_int_equal(tl__url_parse("postgresql://bob:p%40ss:w@db.example:6432/app?sslmode=disable&x=%20y", &u), 0);
  assert_int_equal(u.dialect, TL_DB_POSTGRES);
  assert_string_equal(u.user, "bob");
  assert_string_equal(u.password, "p@ss:w");
  assert_string_equal(u.host, "db.example");
  assert_int_equal(u.port, 6432);
  assert_string_equal(u.path, "app");
  assert_null(strstr(u.masked, "p%40ss"));
  assert_non_null(strstr(u.masked, "bob"));
  char buf[32];
  assert_string_equal(tl__url_param(&u, "x", buf, sizeof buf), " y");
  assert_null(tl__url_param(&u, "sslmod", buf, sizeof buf));
  tl__url_free(&u);

  assert_int_equal(tl__url_parse("mariadb://u@[::1]:3307/db", &u), 0);
  assert_int_equal(u.dialect, TL_DB_MYSQL);
  assert_string_equal(u.host, "::1");
  assert_int_equal(u.port, 3307);
  assert_null(u.password);
  tl__url_free(&u);

  assert_int_equal(tl__url_parse("sqlite::memory:", &u), 0);
  assert_true(u.memory);
  tl__url_free(&u);
  assert_int_equal(tl__url_parse("sqlite:///var/lib/app.db?busy_timeout=100", &u), 0);
  assert_string_equal(u.path, "/var/lib/app.db");
  assert_string_equal(tl__url_param(&u, "busy_timeout", buf, sizeof buf), "100");
  tl__url_free(&u);
  assert_int_equal(tl__url_parse("sqlite://data/app.db", &u), 0);
  assert_string_equal(u.path, "data/app.db");
  tl__url_free(&u);
  assert_int_equal(tl__url_parse("mongodb://a:1,b:2/?replicaSet=rs", &u), 0);
  assert_int_equal(u.dialect, TL_DB_MONGO);
  tl__url_free(&u);

  assert_int_equal(tl__url_parse("postgress://u:topsecret@h/db", &u), TL_EUNSUPP);
  assert_non_null(strstr(tl_error_last(), "'postgress'"));
  assert_null(strstr(tl_error_last(), "topsecret"));
  assert_int_equal(tl__url_parse("postgres://u:topsecret@h:99999/db", &u), TL_EINVAL);
  assert_non_null(strstr(tl_error_last(), "port"));
  assert_null(strstr(tl_error_last(), "topsecret"));
  assert_int_equal(tl__url_parse("mysql://u:a%zzb@h/db", &u), TL_EINVAL);
  assert_int_equal(tl__url_parse("no-scheme", &u), TL_EINVAL);
  assert_int_equal(tl__url_parse("sqlite://", &u), TL_EINVAL);
  assert_int_equal(tl__url_parse("postgres:/x", &u), TL_EINVAL);
}

static void conversions(void **state)
{
  (void)state;
  tl_value out;
  tl_value t = tl_text("123");
  assert_int_equal(tl__value_convert(&t, TL_TYPE_INT, &out), 0);
  assert_int_equal(out.i, 123);
  t = tl_text("9223372036854775808");
  assert_int_equal(tl__value_convert(&t, TL_TYPE_INT, &out), TL_EPROTO);
  t = tl_text("-9223372036854775808");
  assert_int_equal(tl__value_convert(&t, TL_TYPE_INT, &out), 0);
  assert_true(out.i == INT64_MIN);
  tl_value d = tl_double(3.0);
  assert_int_equal(tl__value_convert(&d, TL_TYPE_INT, &out), 0);
  assert_int_equal(out.i, 3);
  d = tl_double(3.5);
  assert_int_equal(tl__value_convert(&d, TL_TYPE_INT, &out), TL_EPROTO);
  d = tl_double(1e300);
  assert_int_equal(tl__value_convert(&d, TL_TYPE_INT, &out), TL_EPROTO);
  t = tl_text("t");
  assert_int_equal(tl__value_convert(&t, TL_TYPE_BOOL, &out), 0);
  assert_true(out.b);
  tl_value i = tl_int(2);
  assert_int_equal(tl__value_convert(&i, TL_TYPE_BOOL, &out), TL_EPROTO);
  tl_value n = tl_null();
  assert_int_equal(tl__value_convert(&n, TL_TYPE_TEXT, &out), TL_ENOTFOUND);
  t = tl_text("2.5e3");
  assert_int_equal(tl__value_convert(&t, TL_TYPE_DOUBLE, &out), 0);
  assert_true(out.d == 2500.0);
  t = tl_text("1969-12-31 23:59:59.5+00");
  assert_int_equal(tl__value_convert(&t, TL_TYPE_TIMESTAMP, &out), 0);
  assert_int_equal(out.i, -500000);
  tl_value b = tl_blob("x", 1);
  assert_int_equal(tl__value_convert(&b, TL_TYPE_TEXT, &out), TL_EPROTO);
  assert_string_equal(tl_type_name(TL_TYPE_JSON), "json");
}

static void timestamps(void **state)
{
  (void)state;
  struct { const char *text; int64_t us; } cases[] = {
    { "1970-01-01 00:00:00+00", 0 },
    { "2026-01-01T00:00:00.123456Z", 1767225600123456 },
    { "1969-07-20 20:17:40.123456", -14182939876544 },
    { "1969-07-20 22:17:40.123456+02", -14182939876544 },
    { "1969-07-20 15:47:40.123456-04:30", -14182939876544 },
    { "2000-02-29", 951782400000000 },
    { "0001-01-01 00:00:00+00", -62135596800000000 },
    { "0001-01-01 00:00:00+00 BC", -62167219200000000 },
  };
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    int64_t us;
    if (tl__ts_parse(cases[k].text, strlen(cases[k].text), &us) != 0)
      fail_msg("parse '%s'", cases[k].text);
    if (us != cases[k].us) fail_msg("'%s': %lld != %lld", cases[k].text, (long long)us, (long long)cases[k].us);
  }
  int64_t us;
  assert_int_equal(tl__ts_parse("2026-13-01", 10, &us), TL_EPROTO);
  assert_int_equal(tl__ts_parse("yesterday", 9, &us), TL_EPROTO);
  assert_int_equal(tl__ts_parse("2026-01-01 10:00:00 junk", 24, &us), TL_EPROTO);
  char buf[40];
  tl__ts_format(-14182939876544, buf, sizeof buf);
  assert_string_equal(buf, "1969-07-20 20:17:40.123456");
  tl__ts_format(-1, buf, sizeof buf);
  assert_string_equal(buf, "1969-12-31 23:59:59.999999");
  /* Round trip over a wide range, including leap days and before 1970. */
  for (int64_t t = -62135596800000000; t < 253402300799000000; t += 86400000000LL * 367 + 3723000001) {
    tl__ts_format(t, buf, sizeof buf);
    assert_int_equal(tl__ts_parse(buf, strlen(buf), &us), 0);
    assert_true(us == t);
  }
}

static void error_classes(void **state)
{
  (void)state;
  assert_int_equal(tl__class_from_sqlstate("23505"), TL_DB_ERR_UNIQUE);
  assert_int_equal(tl__class_from_sqlstate("40001"), TL_DB_ERR_SERIALIZATION);
  assert_int_equal(tl__class_from_sqlstate("40P01"), TL_DB_ERR_DEADLOCK);
  assert_int_equal(tl__class_from_sqlstate("08006"), TL_DB_ERR_CONNECTION_LOST);
  assert_int_equal(tl__class_from_sqlstate("57P01"), TL_DB_ERR_CONNECTION_LOST);
  assert_int_equal(tl__class_from_sqlstate("57014"), TL_DB_ERR_TIMEOUT);
  assert_int_equal(tl__class_from_sqlstate("42P01"), TL_DB_ERR_SYNTAX);
  assert_int_equal(tl__class_from_sqlstate(NULL), TL_DB_ERR_OTHER);
  assert_int_equal(tl__class_from_mysql(1062), TL_DB_ERR_UNIQUE);
  assert_int_equal(tl__class_from_mysql(1213), TL_DB_ERR_DEADLOCK);
  assert_int_equal(tl__class_from_mysql(1205), TL_DB_ERR_BUSY);
  assert_int_equal(tl__class_from_mysql(2013), TL_DB_ERR_CONNECTION_LOST);
  assert_int_equal(tl__class_from_mysql(4025), TL_DB_ERR_CHECK);
  assert_int_equal(tl__class_from_sqlite(2067), TL_DB_ERR_UNIQUE);   /* CONSTRAINT_UNIQUE */
  assert_int_equal(tl__class_from_sqlite(517), TL_DB_ERR_SERIALIZATION); /* BUSY_SNAPSHOT */
  assert_int_equal(tl__class_from_sqlite(5), TL_DB_ERR_BUSY);
  assert_int_equal(tl__class_from_sqlite(262), TL_DB_ERR_BUSY);     /* LOCKED_SHAREDCACHE */
  assert_int_equal(tl__db_class_status(TL_DB_ERR_UNIQUE), TL_ECONFLICT);
  assert_int_equal(tl__db_class_status(TL_DB_ERR_BUSY), TL_ERETRY);
  assert_int_equal(tl__db_class_status(TL_DB_ERR_NOT_NULL), TL_ECONSTRAINT);
  assert_int_equal(tl__db_class_status(TL_DB_ERR_CONNECTION_LOST), TL_ECONNECT);
  assert_string_equal(tl_db_error_class_name(TL_DB_ERR_FOREIGN_KEY), "foreign_key");
  assert_int_equal(tl__db_fail(TL_DB_ERR_DEADLOCK, "x %d", 1), TL_ERETRY);
  assert_int_equal(tl_db_error_last_class(), TL_DB_ERR_DEADLOCK);
  assert_string_equal(tl_error_last(), "x 1");
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(pg_keeps_and_skips),
    cmocka_unit_test(mysql_maps_to_qmarks),
    cmocka_unit_test(sqlite_positional),
    cmocka_unit_test(errors),
    cmocka_unit_test(split),
    cmocka_unit_test(urls),
    cmocka_unit_test(conversions),
    cmocka_unit_test(timestamps),
    cmocka_unit_test(error_classes),
  };
  return cmocka_run_group_tests_name("db_scan", tests, NULL, NULL);
}
