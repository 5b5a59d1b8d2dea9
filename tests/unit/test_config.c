/* Unit tests for the configuration module: the .env grammar, environment
 * overlay, typed getters and URL masking. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "trellis/config.h"
#include "trellis/error.h"

/* ---- helpers ---------------------------------------------------------- */

#define assert_msg_has(needle)                                                \
  do {                                                                        \
    if (!strstr(tl_error_last(), (needle)))                                   \
      fail_msg("error message '%s' does not contain '%s'", tl_error_last(),   \
               (needle));                                                     \
  } while (0)

#define assert_msg_lacks(needle)                                              \
  do {                                                                        \
    if (strstr(tl_error_last(), (needle)))                                    \
      fail_msg("error message '%s' contains '%s'", tl_error_last(), (needle)); \
  } while (0)

static tl_config *parse_ok(const char *text)
{
  tl_config *cfg = NULL;
  assert_int_equal(tl_config_new(&cfg), 0);
  int rc = tl_config_parse(cfg, text, strlen(text), "test.env");
  if (rc != 0)
    fail_msg("parse failed (%d): %s", rc, tl_error_last());
  return cfg;
}

/* Parse `text` expecting a syntax error whose message contains `want`. */
static void parse_bad(const char *text, size_t len, const char *want)
{
  tl_config *cfg = NULL;
  assert_int_equal(tl_config_new(&cfg), 0);
  tl_error_clear();
  assert_int_equal(tl_config_parse(cfg, text, len, "test.env"), TL_EINVAL);
  assert_msg_has(want);
  tl_config_free(cfg);
}

static void assert_value(const tl_config *cfg, const char *key,
                         const char *want)
{
  const char *got = tl_config_get(cfg, key);
  if (!got)
    fail_msg("%s is unset, expected '%s'", key, want);
  assert_string_equal(got, want);
}

struct collected {
  char text[512];
  int count;
};

static void collect(const char *key, const char *value, void *ctx)
{
  struct collected *c = ctx;
  size_t n = strlen(c->text);
  snprintf(c->text + n, sizeof c->text - n, "%s=%s;", key, value);
  c->count++;
}

/* ---- grammar ---------------------------------------------------------- */

static void test_parse_basic(void **state)
{
  (void)state;
  tl_config *cfg = parse_ok("A=1\n"
                            "B = two  \n"
                            "# a comment\n"
                            "\n"
                            "   \t\n"
                            "  C=three\n"
                            "   # indented comment\n"
                            "EMPTY=\n"
                            "lower_case_9=x");
  assert_value(cfg, "A", "1");
  assert_value(cfg, "B", "two");
  assert_value(cfg, "C", "three");
  assert_value(cfg, "EMPTY", "");
  assert_value(cfg, "lower_case_9", "x");
  assert_null(tl_config_get(cfg, "D"));
  assert_null(tl_config_get(cfg, "# a comment"));
  struct collected c = { "", 0 };
  tl_config_each(cfg, collect, &c);
  assert_int_equal(c.count, 5);
  assert_string_equal(c.text, "A=1;B=two;C=three;EMPTY=;lower_case_9=x;");
  tl_config_free(cfg);
}

static void test_parse_export(void **state)
{
  (void)state;
  tl_config *cfg = parse_ok("export FOO=bar\n"
                            "export\t BAZ = qux\n"
                            "export=1\n"
                            "exported=2\n");
  assert_value(cfg, "FOO", "bar");
  assert_value(cfg, "BAZ", "qux");
  assert_value(cfg, "export", "1");
  assert_value(cfg, "exported", "2");
  assert_null(tl_config_get(cfg, "export FOO"));
  tl_config_free(cfg);

  cfg = parse_ok("export = spaced\n");
  assert_value(cfg, "export", "spaced");
  tl_config_free(cfg);
}

static void test_parse_single_quotes(void **state)
{
  (void)state;
  setenv("TL_TEST_SQ", "nope", 1);
  tl_config *cfg = parse_ok("A='x $TL_TEST_SQ ${TL_TEST_SQ} \\n # y'\n"
                            "B = '  padded  '  \n"
                            "C=''\n"
                            "D='say \"hi\"' # comment\n");
  assert_value(cfg, "A", "x $TL_TEST_SQ ${TL_TEST_SQ} \\n # y");
  assert_value(cfg, "B", "  padded  ");
  assert_value(cfg, "C", "");
  assert_value(cfg, "D", "say \"hi\"");
  tl_config_free(cfg);
  unsetenv("TL_TEST_SQ");
}

static void test_parse_double_quotes(void **state)
{
  (void)state;
  tl_config *cfg = parse_ok("A=\"a\\nb\\tc\\rd\\\"e\\\\f\\$g\"\n"
                            "B=\"C:\\dir\\q\"\n"
                            "C=\"  keep # spaces  \"\n"
                            "D=\"\"\n"
                            "E=\"it's\"\n");
  assert_value(cfg, "A", "a\nb\tc\rd\"e\\f$g");
  assert_value(cfg, "B", "C:\\dir\\q");
  assert_value(cfg, "C", "  keep # spaces  ");
  assert_value(cfg, "D", "");
  assert_value(cfg, "E", "it's");
  tl_config_free(cfg);
}

static void test_parse_multiline(void **state)
{
  (void)state;
  tl_config *cfg = parse_ok("KEY=\"-----BEGIN-----\n"
                            "abc\n"
                            "-----END-----\"\n"
                            "NEXT=after\n");
  assert_value(cfg, "KEY", "-----BEGIN-----\nabc\n-----END-----");
  assert_value(cfg, "NEXT", "after");
  tl_config_free(cfg);

  /* Line numbers keep counting inside a multi-line value. */
  parse_bad("A=\"x\ny\"\nB\n", strlen("A=\"x\ny\"\nB\n"), "'test.env' line 3: missing '='");
}

static void test_parse_inline_comments(void **state)
{
  (void)state;
  tl_config *cfg = parse_ok("A=val # comment\n"
                            "B=val#not-a-comment\n"
                            "C=  # only a comment\n"
                            "D=\"q\" # c\n"
                            "E='q'#c\n"
                            "F=a\t# tab comment\n"
                            "G=#hash\n"
                            "H=x  y   # two words\n");
  assert_value(cfg, "A", "val");
  assert_value(cfg, "B", "val#not-a-comment");
  assert_value(cfg, "C", "");
  assert_value(cfg, "D", "q");
  assert_value(cfg, "E", "q");
  assert_value(cfg, "F", "a");
  assert_value(cfg, "G", "#hash");
  assert_value(cfg, "H", "x  y");
  tl_config_free(cfg);
}

static void test_parse_expansion(void **state)
{
  (void)state;
  unsetenv("TL_TEST_UNSET");
  tl_config *cfg = parse_ok("A=hello\n"
                            "B=${A} world\n"
                            "C=$A-x\n"
                            "D=\"$A!\"\n"
                            "E='$A'\n"
                            "F=${TL_TEST_UNSET}end\n"
                            "G=$\n"
                            "H=cost $5 and $\n"
                            "I=\"\\$A\"\n"
                            "J=$A$A\n"
                            "K=${A}_${C}\n"
                            "L=$Ab\n");
  assert_value(cfg, "B", "hello world");
  assert_value(cfg, "C", "hello-x");
  assert_value(cfg, "D", "hello!");
  assert_value(cfg, "E", "$A");
  assert_value(cfg, "F", "end");
  assert_value(cfg, "G", "$");
  assert_value(cfg, "H", "cost $5 and $");
  assert_value(cfg, "I", "$A");
  assert_value(cfg, "J", "hellohello");
  assert_value(cfg, "K", "hello_hello-x");
  assert_value(cfg, "L", ""); /* $Ab names the unset key Ab */
  tl_config_free(cfg);
}

static void test_parse_expansion_sources(void **state)
{
  (void)state;
  setenv("TL_TEST_ENVVAR", "fromenv", 1);
  tl_config *cfg = parse_ok("A=${TL_TEST_ENVVAR}\n"
                            "TL_TEST_ENVVAR=fromfile\n"
                            "B=$TL_TEST_ENVVAR\n");
  assert_value(cfg, "A", "fromenv");
  assert_value(cfg, "B", "fromfile");
  tl_config_free(cfg);

  /* Keys already in the configuration count, before the environment. */
  tl_config_new(&cfg);
  assert_int_equal(tl_config_set(cfg, "TL_TEST_ENVVAR", "preset"), 0);
  assert_int_equal(tl_config_set(cfg, "HOST", "db.local"), 0);
  const char *text = "URL=\"postgres://${HOST}/x\"\nV=$TL_TEST_ENVVAR\n";
  assert_int_equal(tl_config_parse(cfg, text, strlen(text), "t"), 0);
  assert_value(cfg, "URL", "postgres://db.local/x");
  assert_value(cfg, "V", "preset");
  tl_config_free(cfg);

  /* A later key replaces an earlier one but an expansion already done
   * keeps the old value. */
  cfg = parse_ok("X=1\nY=$X\nX=2\nZ=$X\n");
  assert_value(cfg, "X", "2");
  assert_value(cfg, "Y", "1");
  assert_value(cfg, "Z", "2");
  tl_config_free(cfg);
  unsetenv("TL_TEST_ENVVAR");
}

static void test_parse_expansion_default(void **state)
{
  (void)state;
  unsetenv("TL_TEST_U1");
  unsetenv("TL_TEST_U2");
  setenv("TL_TEST_SET", "set", 1);
  tl_config *cfg = parse_ok("EMPTY=\n"
                            "A=${TL_TEST_U1:-def}\n"
                            "B=${TL_TEST_SET:-def}\n"
                            "C=\"${TL_TEST_U1:-two words}\"\n"
                            "D=${EMPTY:-x}\n"
                            "E=${TL_TEST_U1:-${TL_TEST_U2:-deep}}\n"
                            "F=${TL_TEST_U1:-}\n"
                            "G=${TL_TEST_U1:-$A}\n"
                            "H=\"${TL_TEST_U1:-a\\\"b\\n}\"\n"
                            "I=pre${TL_TEST_U1:-mid}post\n"
                            "J=\"${TL_TEST_U1:-line1\nline2}\"\n"
                            "K=after\n");
  assert_value(cfg, "A", "def");
  assert_value(cfg, "B", "set");
  assert_value(cfg, "C", "two words");
  assert_value(cfg, "D", "x");
  assert_value(cfg, "E", "deep");
  assert_value(cfg, "F", "");
  assert_value(cfg, "G", "def");
  assert_value(cfg, "H", "a\"b\n");
  assert_value(cfg, "I", "premidpost");
  assert_value(cfg, "J", "line1\nline2");
  assert_value(cfg, "K", "after");
  tl_config_free(cfg);
  unsetenv("TL_TEST_SET");
}

static void test_parse_crlf(void **state)
{
  (void)state;
  tl_config *cfg = parse_ok("# comment\r\n"
                            "A=1\r\n"
                            "\r\n"
                            "B=\"x\r\ny\"\r\n"
                            "C='q'\r\n"
                            "D=v # c\r\n"
                            "E=last\r\n");
  assert_value(cfg, "A", "1");
  assert_value(cfg, "B", "x\ny");
  assert_value(cfg, "C", "q");
  assert_value(cfg, "D", "v");
  assert_value(cfg, "E", "last");
  tl_config_free(cfg);

  parse_bad("A=1\r\nB\r\n", strlen("A=1\r\nB\r\n"), "'test.env' line 2: missing '='");
}

static void test_parse_bom(void **state)
{
  (void)state;
  tl_config *cfg = parse_ok("\xEF\xBB\xBF" "A=1\nB=2\n");
  assert_value(cfg, "A", "1");
  assert_value(cfg, "B", "2");
  tl_config_free(cfg);
  /* Only at the very start. */
  parse_bad("A=1\n\xEF\xBB\xBF" "B=2\n", 11, "'test.env' line 2: invalid key");
}

static void test_parse_duplicates_and_case(void **state)
{
  (void)state;
  tl_config *cfg = parse_ok("A=1\nB=2\nA=3\na=lower\n");
  assert_value(cfg, "A", "3");
  assert_value(cfg, "a", "lower");
  struct collected c = { "", 0 };
  tl_config_each(cfg, collect, &c);
  assert_int_equal(c.count, 3);
  assert_string_equal(c.text, "A=3;B=2;a=lower;");

  /* A second parse overrides the first and keeps first-seen order. */
  const char *more = "B=20\nC=30\n";
  assert_int_equal(tl_config_parse(cfg, more, strlen(more), "more"), 0);
  memset(&c, 0, sizeof c);
  tl_config_each(cfg, collect, &c);
  assert_string_equal(c.text, "A=3;B=20;a=lower;C=30;");
  tl_config_free(cfg);
}

static void test_parse_many_keys(void **state)
{
  (void)state;
  char text[16384] = "";
  size_t n = 0;
  for (int i = 0; i < 500; i++)
    n += (size_t)snprintf(text + n, sizeof text - n, "KEY_%d=value_%d\n", i, i);
  tl_config *cfg = parse_ok(text);
  char key[32], want[32];
  for (int i = 0; i < 500; i++) {
    snprintf(key, sizeof key, "KEY_%d", i);
    snprintf(want, sizeof want, "value_%d", i);
    assert_value(cfg, key, want);
  }
  assert_null(tl_config_get(cfg, "KEY_500"));
  tl_config_free(cfg);
}

static void test_parse_errors(void **state)
{
  (void)state;
  const char *t;
  t = "A=1\n\nB=\"abc\n";
  parse_bad(t, strlen(t), "'test.env' line 3: unterminated double quote");
  t = "A='abc\nB=1'\n";
  parse_bad(t, strlen(t), "'test.env' line 1: unterminated single quote");
  t = "A=1\nNOEQUALS\n";
  parse_bad(t, strlen(t), "'test.env' line 2: missing '=' after key 'NOEQUALS'");
  t = "A=1\nB C=2\n";
  parse_bad(t, strlen(t), "'test.env' line 2: missing '=' after key 'B'");
  t = "1A=x\n";
  parse_bad(t, strlen(t), "'test.env' line 1: invalid key '1A'");
  t = "\n\nA-B=x\n";
  parse_bad(t, strlen(t), "'test.env' line 3: invalid key 'A-B'");
  t = "=x\n";
  parse_bad(t, strlen(t), "'test.env' line 1: missing key before '='");
  t = "A=1\nB=${C\n";
  parse_bad(t, strlen(t), "'test.env' line 2: unterminated '${'");
  t = "A=${C:-x\n";
  parse_bad(t, strlen(t), "'test.env' line 1: unterminated '${'");
  t = "A=${C:-x #}\n";
  parse_bad(t, strlen(t), "'test.env' line 1: unterminated '${'");
  t = "A=\"${C:-x\"\n";
  parse_bad(t, strlen(t), "'test.env' line 1: unterminated '${'");
  t = "A=\"${C\"\n";
  parse_bad(t, strlen(t), "'test.env' line 1: invalid variable reference");
  t = "A=${1X}\n";
  parse_bad(t, strlen(t), "'test.env' line 1: invalid variable reference");
  t = "A=${}\n";
  parse_bad(t, strlen(t), "'test.env' line 1: invalid variable reference");
  t = "A=${B-x}\n";
  parse_bad(t, strlen(t), "'test.env' line 1: invalid variable reference");
  t = "A=\"x\" y\n";
  parse_bad(t, strlen(t), "'test.env' line 1: unexpected text after closing quote");
  t = "A='x'y\n";
  parse_bad(t, strlen(t), "'test.env' line 1: unexpected text after closing quote");
  t = "A=\"multi\nline\" junk\n";
  parse_bad(t, strlen(t), "'test.env' line 2: unexpected text after closing quote");
  t = "A=\"x\\\"";
  parse_bad(t, strlen(t), "'test.env' line 1: unterminated double quote");
  parse_bad("A=1\nB=x\0y\n", 10, "'test.env' line 2: unexpected NUL byte");
}

static void test_parse_error_origin_null(void **state)
{
  (void)state;
  tl_config *cfg;
  tl_config_new(&cfg);
  assert_int_equal(tl_config_parse(cfg, "A=1\nB\n", 6, NULL), TL_EINVAL);
  assert_string_equal(tl_error_last(), "line 2: missing '=' after key 'B'");
  tl_config_free(cfg);
}

static void test_parse_error_changes_nothing(void **state)
{
  (void)state;
  tl_config *cfg;
  tl_config_new(&cfg);
  tl_config_set(cfg, "A", "old");
  const char *t = "A=new\nB=1\nC=\"oops\n";
  assert_int_equal(tl_config_parse(cfg, t, strlen(t), "x"), TL_EINVAL);
  assert_value(cfg, "A", "old");
  assert_null(tl_config_get(cfg, "B"));
  struct collected c = { "", 0 };
  tl_config_each(cfg, collect, &c);
  assert_int_equal(c.count, 1);
  tl_config_free(cfg);
}

static void test_parse_limits(void **state)
{
  (void)state;
  /* 1000 x 100 x 100 bytes would be 10 MB. */
  size_t cap = 4096;
  char *t = malloc(cap);
  assert_non_null(t);
  size_t n = 0;
  n += (size_t)snprintf(t + n, cap - n, "A=");
  memset(t + n, 'x', 1000);
  n += 1000;
  n += (size_t)snprintf(t + n, cap - n, "\nB=");
  for (int i = 0; i < 100; i++)
    n += (size_t)snprintf(t + n, cap - n, "$A");
  n += (size_t)snprintf(t + n, cap - n, "\nC=");
  for (int i = 0; i < 100; i++)
    n += (size_t)snprintf(t + n, cap - n, "$B");
  n += (size_t)snprintf(t + n, cap - n, "\n");
  parse_bad(t, n, "'test.env' line 3: variable expansion exceeds 8 MiB");

  /* Defaults nest, up to a limit. */
  n = (size_t)snprintf(t, cap, "A=");
  for (int i = 0; i < 40; i++)
    n += (size_t)snprintf(t + n, cap - n, "${TL_TEST_U%d:-", i);
  for (int i = 0; i < 40; i++)
    t[n++] = '}';
  t[n] = '\0';
  parse_bad(t, n, "'test.env' line 1: '${' nested too deeply");
  free(t);
}

/* ---- set, load, environment ------------------------------------------- */

static void test_set_get(void **state)
{
  (void)state;
  tl_config *cfg;
  assert_int_equal(tl_config_new(&cfg), 0);
  assert_int_equal(tl_config_set(cfg, "K", "v1"), 0);
  assert_int_equal(tl_config_set(cfg, "K", "v2"), 0);
  assert_value(cfg, "K", "v2");
  assert_int_equal(tl_config_set(cfg, "BAD-KEY", "v"), TL_EINVAL);
  assert_msg_has("'BAD-KEY'");
  assert_int_equal(tl_config_set(cfg, "", "v"), TL_EINVAL);
  assert_int_equal(tl_config_set(cfg, "9X", "v"), TL_EINVAL);
  assert_int_equal(tl_config_set(cfg, "K", NULL), TL_EINVAL);
  assert_null(tl_config_get(cfg, "BAD-KEY"));
  assert_null(tl_config_get(NULL, "K"));
  assert_null(tl_config_get(cfg, NULL));

  /* Empty text is a valid, empty file. */
  assert_int_equal(tl_config_parse(cfg, "", 0, "e"), 0);
  assert_int_equal(tl_config_parse(cfg, NULL, 0, "e"), 0);
  assert_value(cfg, "K", "v2");

  /* Missing arguments are refused, not dereferenced. */
  const char *s;
  int64_t v;
  bool b;
  int i;
  char **list;
  assert_int_equal(tl_config_new(NULL), TL_EINVAL);
  assert_int_equal(tl_config_load(NULL, NULL), TL_EINVAL);
  assert_int_equal(tl_config_parse(NULL, "A=1", 3, "x"), TL_EINVAL);
  assert_int_equal(tl_config_parse(cfg, NULL, 3, "x"), TL_EINVAL);
  assert_int_equal(tl_config_overlay_environ(NULL), TL_EINVAL);
  assert_int_equal(tl_config_string(cfg, "K", NULL, NULL), TL_EINVAL);
  assert_int_equal(tl_config_int(cfg, NULL, 0, 0, 1, &v), TL_EINVAL);
  assert_int_equal(tl_config_bool(cfg, "K", false, NULL), TL_EINVAL);
  assert_int_equal(tl_config_duration(cfg, "K", 0, NULL), TL_EINVAL);
  assert_int_equal(tl_config_url(cfg, "K", NULL, NULL, NULL), TL_EINVAL);
  assert_int_equal(tl_config_list(cfg, "K", NULL, NULL, NULL), TL_EINVAL);
  assert_int_equal(tl_config_enum(cfg, "K", NULL, NULL, &i), TL_EINVAL);
  /* A NULL configuration reads as an empty one. */
  assert_int_equal(tl_config_string(NULL, "K", "d", &s), 0);
  assert_string_equal(s, "d");
  assert_int_equal(tl_config_bool(NULL, "K", true, &b), 0);
  assert_true(b);
  assert_int_equal(tl_config_list(NULL, "K", "a", &list, NULL), 0);
  assert_string_equal(list[0], "a");
  tl_config_list_free(list);
  tl_config_each(NULL, NULL, NULL);

  tl_config_free(cfg);
  tl_config_free(NULL);
  tl_config_list_free(NULL);
}

static char tmpdir[256];

static int make_tmpdir(void **state)
{
  (void)state;
  snprintf(tmpdir, sizeof tmpdir, "/tmp/tl_test_config_XXXXXX");
  return mkdtemp(tmpdir) ? 0 : -1;
}

static int remove_tmpdir(void **state)
{
  (void)state;
  char cmd[512];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
  return system(cmd) == 0 ? 0 : -1;
}

static void write_file(const char *path, const char *text)
{
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(text, 1, strlen(text), f), strlen(text));
  assert_int_equal(fclose(f), 0);
}

static void test_load_file_and_overlay(void **state)
{
  (void)state;
  char path[512];
  snprintf(path, sizeof path, "%s/app.env", tmpdir);
  write_file(path, "TL_TEST_OVERLAY=file\nTL_TEST_FILEONLY=only\n"
                   "TL_TEST_EMPTIED=file\n");
  setenv("TL_TEST_OVERLAY", "env", 1);
  setenv("TL_TEST_ENVONLY", "envonly", 1);
  setenv("TL_TEST_EMPTIED", "", 1);
  setenv("TL_TEST-DASHED", "skipped", 1);
  unsetenv("TL_TEST_FILEONLY");

  tl_config *cfg = NULL;
  assert_int_equal(tl_config_load(&cfg, path), 0);
  assert_value(cfg, "TL_TEST_OVERLAY", "env");
  assert_value(cfg, "TL_TEST_FILEONLY", "only");
  assert_value(cfg, "TL_TEST_ENVONLY", "envonly");
  assert_value(cfg, "TL_TEST_EMPTIED", "");
  /* Names that are not valid keys are not configuration. */
  assert_null(tl_config_get(cfg, "TL_TEST-DASHED"));
  /* The environment's empty value wins and reads as unset. */
  const char *s = NULL;
  assert_int_equal(tl_config_string(cfg, "TL_TEST_EMPTIED", "def", &s), 0);
  assert_string_equal(s, "def");
  tl_config_free(cfg);

  /* tl_config_overlay_environ on its own. */
  tl_config_new(&cfg);
  tl_config_set(cfg, "TL_TEST_OVERLAY", "mine");
  assert_int_equal(tl_config_overlay_environ(cfg), 0);
  assert_value(cfg, "TL_TEST_OVERLAY", "env");
  tl_config_free(cfg);

  unsetenv("TL_TEST_OVERLAY");
  unsetenv("TL_TEST_ENVONLY");
  unsetenv("TL_TEST_EMPTIED");
  unsetenv("TL_TEST-DASHED");
}

static void test_load_missing_file(void **state)
{
  (void)state;
  char path[512];
  snprintf(path, sizeof path, "%s/does-not-exist.env", tmpdir);
  setenv("TL_TEST_MISSING", "still", 1);
  tl_config *cfg = NULL;
  assert_int_equal(tl_config_load(&cfg, path), 0);
  assert_non_null(cfg);
  assert_value(cfg, "TL_TEST_MISSING", "still");
  tl_config_free(cfg);
  unsetenv("TL_TEST_MISSING");
}

static void test_load_default_path(void **state)
{
  (void)state;
  char old[1024], path[512];
  assert_non_null(getcwd(old, sizeof old));
  snprintf(path, sizeof path, "%s/cwd", tmpdir);
  assert_int_equal(mkdir(path, 0700), 0);
  assert_int_equal(chdir(path), 0);
  write_file(".env", "TL_TEST_DOTENV=yes\nBROKEN='\n");
  /* On failure *out is cleared, whatever it held before. */
  tl_config *other = NULL, *cfg;
  assert_int_equal(tl_config_new(&other), 0);
  cfg = other;
  assert_int_equal(tl_config_load(&cfg, NULL), TL_EINVAL);
  assert_string_equal(tl_error_last(), "'.env' line 2: unterminated single quote");
  assert_null(cfg);
  tl_config_free(other);
  write_file(".env", "TL_TEST_DOTENV=yes\n");
  assert_int_equal(tl_config_load(&cfg, NULL), 0);
  assert_value(cfg, "TL_TEST_DOTENV", "yes");
  tl_config_free(cfg);
  assert_int_equal(chdir(old), 0);
}

static void test_load_unreadable(void **state)
{
  (void)state;
  /* A directory opens but cannot be read, whoever runs the test. */
  tl_config *cfg = NULL;
  assert_int_equal(tl_config_load(&cfg, tmpdir), TL_EIO);
  assert_null(cfg);
  assert_msg_has(tmpdir);

  char path[512];
  snprintf(path, sizeof path, "%s/locked.env", tmpdir);
  write_file(path, "A=1\n");
  assert_int_equal(chmod(path, 0), 0);
  if (geteuid() != 0) {
    assert_int_equal(tl_config_load(&cfg, path), TL_EIO);
    assert_msg_has(path);
    assert_null(cfg);
  }
  chmod(path, 0600);

  /* An endless file is refused instead of read forever. */
  assert_int_equal(tl_config_load(&cfg, "/dev/zero"), TL_EIO);
  assert_string_equal(tl_error_last(), "'/dev/zero': larger than 64 MiB");
  assert_null(cfg);
}

static void test_load_bad_syntax_names_path(void **state)
{
  (void)state;
  char path[512], want[600];
  snprintf(path, sizeof path, "%s/bad.env", tmpdir);
  write_file(path, "# header\nGOOD=1\nPASSWORD=\"unterminated\n");
  tl_config *cfg = NULL;
  assert_int_equal(tl_config_load(&cfg, path), TL_EINVAL);
  assert_null(cfg);
  snprintf(want, sizeof want, "'%s' line 3: unterminated double quote", path);
  assert_string_equal(tl_error_last(), want);
}

/* ---- typed getters ---------------------------------------------------- */

static tl_config *cfg_with(const char *key, const char *value)
{
  tl_config *cfg;
  assert_int_equal(tl_config_new(&cfg), 0);
  assert_int_equal(tl_config_set(cfg, key, value), 0);
  return cfg;
}

static void test_get_string(void **state)
{
  (void)state;
  tl_config *cfg = cfg_with("NAME", "svc");
  tl_config_set(cfg, "EMPTY", "");
  const char *s = NULL;
  assert_int_equal(tl_config_string(cfg, "NAME", "def", &s), 0);
  assert_string_equal(s, "svc");
  assert_int_equal(tl_config_string(cfg, "NOPE", "def", &s), 0);
  assert_string_equal(s, "def");
  assert_int_equal(tl_config_string(cfg, "EMPTY", "def", &s), 0);
  assert_string_equal(s, "def");
  assert_int_equal(tl_config_string(cfg, "NOPE", NULL, &s), 0);
  assert_null(s);
  tl_config_free(cfg);
}

static int int_of(const char *value, int64_t min, int64_t max, int64_t *out)
{
  tl_config *cfg = cfg_with("N", value);
  int rc = tl_config_int(cfg, "N", -42, min, max, out);
  tl_config_free(cfg);
  return rc;
}

static void test_get_int(void **state)
{
  (void)state;
  int64_t v = 0;
  tl_config *cfg = cfg_with("HTTP_PORT", "8080");
  assert_int_equal(tl_config_int(cfg, "HTTP_PORT", 80, 1, 65535, &v), 0);
  assert_int_equal(v, 8080);
  assert_int_equal(tl_config_int(cfg, "UNSET", 80, 1, 65535, &v), 0);
  assert_int_equal(v, 80);
  tl_config_set(cfg, "HTTP_PORT", "");
  v = 0;
  assert_int_equal(tl_config_int(cfg, "HTTP_PORT", 80, 1, 65535, &v), 0);
  assert_int_equal(v, 80);

  tl_config_set(cfg, "HTTP_PORT", "abc");
  assert_int_equal(tl_config_int(cfg, "HTTP_PORT", 80, 1, 65535, &v), TL_EINVAL);
  assert_string_equal(tl_error_last(),
                      "HTTP_PORT: 'abc' is not an integer in [1, 65535]");
  tl_config_set(cfg, "HTTP_PORT", "70000");
  assert_int_equal(tl_config_int(cfg, "HTTP_PORT", 80, 1, 65535, &v), TL_EINVAL);
  assert_string_equal(tl_error_last(),
                      "HTTP_PORT: '70000' is out of range [1, 65535]");
  tl_config_set(cfg, "HTTP_PORT", "0");
  assert_int_equal(tl_config_int(cfg, "HTTP_PORT", 80, 1, 65535, &v), TL_EINVAL);
  assert_string_equal(tl_error_last(), "HTTP_PORT: '0' is out of range [1, 65535]");
  assert_int_equal(v, 80); /* untouched on error */
  tl_config_free(cfg);

  assert_int_equal(int_of("-5", -10, 10, &v), 0);
  assert_int_equal(v, -5);
  assert_int_equal(int_of("+7", -10, 10, &v), 0);
  assert_int_equal(v, 7);
  assert_int_equal(int_of("007", 0, 10, &v), 0);
  assert_int_equal(v, 7);
  assert_int_equal(int_of("-0", -1, 1, &v), 0);
  assert_int_equal(v, 0);
  assert_int_equal(int_of("9223372036854775807", INT64_MIN, INT64_MAX, &v), 0);
  assert_true(v == INT64_MAX);
  assert_int_equal(int_of("-9223372036854775808", INT64_MIN, INT64_MAX, &v), 0);
  assert_true(v == INT64_MIN);

  const char *junk[] = { "12x", " 1", "1 ", "0x10", "1.5", "+", "-", "1e3",
                         "--1", "١" };
  for (size_t i = 0; i < sizeof junk / sizeof junk[0]; i++) {
    if (int_of(junk[i], INT64_MIN, INT64_MAX, &v) != TL_EINVAL)
      fail_msg("'%s' was accepted as an integer", junk[i]);
    assert_msg_has("is not an integer");
  }
  assert_int_equal(int_of("99999999999999999999x", 0, 10, &v), TL_EINVAL);
  assert_msg_has("is not an integer");

  assert_int_equal(int_of("9223372036854775808", INT64_MIN, INT64_MAX, &v),
                   TL_EINVAL);
  assert_string_equal(tl_error_last(),
                      "N: '9223372036854775808' is out of range "
                      "[-9223372036854775808, 9223372036854775807]");
  assert_int_equal(int_of("-9223372036854775809", INT64_MIN, INT64_MAX, &v),
                   TL_EINVAL);
  assert_msg_has("is out of range");
  assert_int_equal(int_of("123456789012345678901234567890", 0, 10, &v), TL_EINVAL);
  assert_msg_has("is out of range [0, 10]");

  assert_int_equal(int_of("5", 10, 1, &v), TL_EINVAL);
  assert_msg_has("N: empty range");
}

static void test_get_bool(void **state)
{
  (void)state;
  const char *yes[] = { "true", "TRUE", "True", "1", "yes", "YES", "on", "oN" };
  const char *no[] = { "false", "FALSE", "0", "no", "No", "off", "OFF" };
  bool b;
  for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
    tl_config *cfg = cfg_with("FLAG", yes[i]);
    b = false;
    assert_int_equal(tl_config_bool(cfg, "FLAG", false, &b), 0);
    if (!b)
      fail_msg("'%s' did not read as true", yes[i]);
    tl_config_free(cfg);
  }
  for (size_t i = 0; i < sizeof no / sizeof no[0]; i++) {
    tl_config *cfg = cfg_with("FLAG", no[i]);
    b = true;
    assert_int_equal(tl_config_bool(cfg, "FLAG", true, &b), 0);
    if (b)
      fail_msg("'%s' did not read as false", no[i]);
    tl_config_free(cfg);
  }
  tl_config *cfg = cfg_with("FLAG", "maybe");
  assert_int_equal(tl_config_bool(cfg, "FLAG", false, &b), TL_EINVAL);
  assert_string_equal(tl_error_last(),
                      "FLAG: 'maybe' is not a boolean (expected true/false, "
                      "1/0, yes/no, on/off)");
  tl_config_set(cfg, "FLAG", "truee");
  assert_int_equal(tl_config_bool(cfg, "FLAG", false, &b), TL_EINVAL);
  tl_config_set(cfg, "FLAG", "2");
  assert_int_equal(tl_config_bool(cfg, "FLAG", false, &b), TL_EINVAL);
  tl_config_set(cfg, "FLAG", "");
  b = false;
  assert_int_equal(tl_config_bool(cfg, "FLAG", true, &b), 0);
  assert_true(b);
  b = true;
  assert_int_equal(tl_config_bool(cfg, "UNSET", false, &b), 0);
  assert_false(b);
  tl_config_free(cfg);
}

static void expect_duration(const char *text, int64_t want)
{
  int64_t v = -1;
  if (tl_duration_parse(text, &v) != 0)
    fail_msg("'%s' rejected: %s", text, tl_error_last());
  if (v != want)
    fail_msg("'%s' gave %" PRId64 ", expected %" PRId64, text, v, want);
}

static void expect_bad_duration(const char *text, const char *want)
{
  int64_t v = 12345;
  tl_error_clear();
  if (tl_duration_parse(text, &v) != TL_EINVAL)
    fail_msg("'%s' accepted as %" PRId64, text, v);
  assert_int_equal(v, 12345);
  assert_msg_has(want);
}

static void test_duration_parse(void **state)
{
  (void)state;
  expect_duration("0", 0);
  expect_duration("000", 0);
  expect_duration("0s", 0);
  expect_duration("-0s", 0);
  expect_duration("100us", 100);
  expect_duration("250ms", 250000);
  expect_duration("30s", 30000000);
  expect_duration("5m", 300000000);
  expect_duration("1h", INT64_C(3600000000));
  expect_duration("1h30m", INT64_C(5400000000));
  expect_duration("1h30m15s500ms20us", INT64_C(5415500020));
  expect_duration("90m", INT64_C(5400000000));
  expect_duration("1m1ms", 60001000);
  expect_duration("2562047788h", INT64_C(2562047788) * 3600000000);
  expect_duration("9223372036854775807us", INT64_MAX);

  expect_bad_duration("10", "'10' has no unit (expected e.g. 500ms, 30s, 5m, 1h)");
  expect_bad_duration("99999999999999999999999", "has no unit");
  expect_bad_duration("", "'' is not a duration (expected e.g. 500ms, 30s, 5m, 1h)");
  expect_bad_duration("s", "is not a duration");
  expect_bad_duration("5x", "'5x' is not a duration");
  expect_bad_duration("5 s", "is not a duration");
  expect_bad_duration(" 5s", "is not a duration");
  expect_bad_duration("5s ", "is not a duration");
  expect_bad_duration("1.5s", "is not a duration");
  expect_bad_duration("1h30", "is not a duration");
  expect_bad_duration("5S", "is not a duration");
  expect_bad_duration("+5s", "is not a duration");
  expect_bad_duration("--5s", "is not a duration");
  expect_bad_duration("5sec", "is not a duration");
  expect_bad_duration("-5s", "'-5s' is negative (expected a duration >= 0)");
  expect_bad_duration("2562047789h",
                      "'2562047789h' is out of range (at most 2562047788h)");
  expect_bad_duration("9223372036854775808us", "is out of range");
  expect_bad_duration("9223372036854775807us1us", "is out of range");
  expect_bad_duration("99999999999999999999999h", "is out of range");
  expect_bad_duration("99999999999999999999999hx", "is not a duration");
  int64_t v;
  assert_int_equal(tl_duration_parse(NULL, &v), TL_EINVAL);
}

static void test_get_duration(void **state)
{
  (void)state;
  int64_t v = 0;
  tl_config *cfg = cfg_with("SHUTDOWN_TIMEOUT", "10");
  assert_int_equal(tl_config_duration(cfg, "SHUTDOWN_TIMEOUT", 5, &v), TL_EINVAL);
  assert_string_equal(tl_error_last(),
                      "SHUTDOWN_TIMEOUT: '10' has no unit (expected e.g. "
                      "500ms, 30s, 5m, 1h)");
  tl_config_set(cfg, "SHUTDOWN_TIMEOUT", "1h30m");
  assert_int_equal(tl_config_duration(cfg, "SHUTDOWN_TIMEOUT", 5, &v), 0);
  assert_int_equal(v, INT64_C(5400000000));
  tl_config_set(cfg, "SHUTDOWN_TIMEOUT", "soon");
  assert_int_equal(tl_config_duration(cfg, "SHUTDOWN_TIMEOUT", 5, &v), TL_EINVAL);
  assert_string_equal(tl_error_last(),
                      "SHUTDOWN_TIMEOUT: 'soon' is not a duration (expected "
                      "e.g. 500ms, 30s, 5m, 1h)");
  tl_config_set(cfg, "SHUTDOWN_TIMEOUT", "");
  assert_int_equal(tl_config_duration(cfg, "SHUTDOWN_TIMEOUT", 5, &v), 0);
  assert_int_equal(v, 5);
  assert_int_equal(tl_config_duration(cfg, "UNSET", 30000000, &v), 0);
  assert_int_equal(v, 30000000);
  tl_config_free(cfg);
}

static const char *const db_schemes[] = { "sqlite", "postgres", "postgresql",
                                          "mysql", "mariadb", "mongodb", NULL };

static void test_get_url(void **state)
{
  (void)state;
  const char *u = NULL;
  tl_config *cfg = cfg_with("DATABASE_URL", "postgress://u:hunter2@h/db");
  assert_int_equal(tl_config_url(cfg, "DATABASE_URL", NULL, db_schemes, &u),
                   TL_EINVAL);
  assert_string_equal(tl_error_last(),
                      "DATABASE_URL: 'postgress://u:***@h/db' has an unknown "
                      "scheme 'postgress' (expected one of sqlite, postgres, "
                      "postgresql, mysql, mariadb, mongodb)");
  assert_msg_lacks("hunter2");

  tl_config_set(cfg, "DATABASE_URL", "postgresql://u:hunter2@h:5432/db");
  assert_int_equal(tl_config_url(cfg, "DATABASE_URL", NULL, db_schemes, &u), 0);
  assert_string_equal(u, "postgresql://u:hunter2@h:5432/db");
  tl_config_set(cfg, "DATABASE_URL", "SQLITE://data/app.db");
  assert_int_equal(tl_config_url(cfg, "DATABASE_URL", NULL, db_schemes, &u), 0);
  assert_string_equal(u, "SQLITE://data/app.db");

  tl_config_set(cfg, "DATABASE_URL", "u:hunter2@localhost:5432");
  assert_int_equal(tl_config_url(cfg, "DATABASE_URL", NULL, db_schemes, &u),
                   TL_EINVAL);
  assert_string_equal(tl_error_last(),
                      "DATABASE_URL: 'u:***@localhost:5432' is not a URL "
                      "(expected scheme://...)");
  assert_msg_lacks("hunter2");
  tl_config_set(cfg, "DATABASE_URL", "://x");
  assert_int_equal(tl_config_url(cfg, "DATABASE_URL", NULL, NULL, &u), TL_EINVAL);
  assert_msg_has("is not a URL");

  tl_config_set(cfg, "DATABASE_URL", "anything+v2://x");
  assert_int_equal(tl_config_url(cfg, "DATABASE_URL", NULL, NULL, &u), 0);
  assert_string_equal(u, "anything+v2://x");

  assert_int_equal(tl_config_url(cfg, "UNSET", "sqlite://trellis.db",
                                 db_schemes, &u), 0);
  assert_string_equal(u, "sqlite://trellis.db");
  tl_config_set(cfg, "DATABASE_URL", "");
  assert_int_equal(tl_config_url(cfg, "DATABASE_URL", NULL, db_schemes, &u), 0);
  assert_null(u);
  tl_config_free(cfg);
}

static void test_get_list(void **state)
{
  (void)state;
  tl_config *cfg = cfg_with("BROKERS", " a:9092, b:9092,,c:9092 , ,");
  char **list = NULL;
  size_t n = 99;
  assert_int_equal(tl_config_list(cfg, "BROKERS", NULL, &list, &n), 0);
  assert_int_equal(n, 3);
  assert_string_equal(list[0], "a:9092");
  assert_string_equal(list[1], "b:9092");
  assert_string_equal(list[2], "c:9092");
  assert_null(list[3]);
  tl_config_list_free(list);

  assert_int_equal(tl_config_list(cfg, "UNSET", "x, y", &list, &n), 0);
  assert_int_equal(n, 2);
  assert_string_equal(list[0], "x");
  assert_string_equal(list[1], "y");
  assert_null(list[2]);
  tl_config_list_free(list);

  assert_int_equal(tl_config_list(cfg, "UNSET", NULL, &list, &n), 0);
  assert_int_equal(n, 0);
  assert_non_null(list);
  assert_null(list[0]);
  tl_config_list_free(list);

  tl_config_set(cfg, "ONE", "single");
  assert_int_equal(tl_config_list(cfg, "ONE", NULL, &list, NULL), 0);
  assert_string_equal(list[0], "single");
  assert_null(list[1]);
  tl_config_list_free(list);

  tl_config_set(cfg, "COMMAS", " , ,, ");
  assert_int_equal(tl_config_list(cfg, "COMMAS", "d", &list, &n), 0);
  assert_int_equal(n, 0);
  assert_null(list[0]);
  tl_config_list_free(list);
  tl_config_free(cfg);
}

static void test_get_enum(void **state)
{
  (void)state;
  static const char *const kinds[] = { "memory", "kafka", "rabbitmq", "nats", NULL };
  int i = -7;
  tl_config *cfg = cfg_with("MESSAGE_QUEUE_TYPE", "Kafka");
  assert_int_equal(tl_config_enum(cfg, "MESSAGE_QUEUE_TYPE", "memory", kinds, &i), 0);
  assert_int_equal(i, 1);
  assert_int_equal(tl_config_enum(cfg, "UNSET", "nats", kinds, &i), 0);
  assert_int_equal(i, 3);
  assert_int_equal(tl_config_enum(cfg, "UNSET", NULL, kinds, &i), 0);
  assert_int_equal(i, -1);
  assert_int_equal(tl_config_enum(cfg, "UNSET", "nope", kinds, &i), TL_EINVAL);
  assert_msg_has("UNSET: default 'nope' is not one of");
  tl_config_set(cfg, "MESSAGE_QUEUE_TYPE", "kafak");
  i = -7;
  assert_int_equal(tl_config_enum(cfg, "MESSAGE_QUEUE_TYPE", "memory", kinds, &i),
                   TL_EINVAL);
  assert_string_equal(tl_error_last(),
                      "MESSAGE_QUEUE_TYPE: 'kafak' is not one of memory, "
                      "kafka, rabbitmq, nats");
  assert_int_equal(i, -7);

  /* A long list of choices is cut, not overflowed. */
  static const char *const many[] = {
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
    "cccccccccccccccccccccccccccccccccccccccc", "dddddddddddddddddddddddddddddddddddddddd",
    "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee", "ffffffffffffffffffffffffffffffffffffffff",
    "gggggggggggggggggggggggggggggggggggggggg", "hhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhh",
    NULL
  };
  assert_int_equal(tl_config_enum(cfg, "MESSAGE_QUEUE_TYPE", NULL, many, &i),
                   TL_EINVAL);
  assert_msg_has("is not one of aaaa");
  assert_msg_has("...");
  assert_msg_lacks("hhhh");
  tl_config_free(cfg);
}

static void test_messages_never_show_passwords(void **state)
{
  (void)state;
  int64_t v;
  bool b;
  tl_config *cfg = cfg_with("X", "redis://admin:s3cr3t@cache:6379");
  assert_int_equal(tl_config_int(cfg, "X", 0, 0, 1, &v), TL_EINVAL);
  assert_msg_lacks("s3cr3t");
  assert_msg_has("'redis://admin:***@cache:6379'");
  assert_int_equal(tl_config_bool(cfg, "X", false, &b), TL_EINVAL);
  assert_msg_lacks("s3cr3t");
  assert_int_equal(tl_config_duration(cfg, "X", 0, &v), TL_EINVAL);
  assert_msg_lacks("s3cr3t");
  tl_config_free(cfg);

  /* Long values are cut in messages. */
  char big[600];
  memset(big, '7', sizeof big - 1);
  big[sizeof big - 1] = '\0';
  cfg = cfg_with("BIG", big);
  assert_int_equal(tl_config_int(cfg, "BIG", 0, 0, 1, &v), TL_EINVAL);
  assert_msg_has("...' is out of range");
  assert_true(strlen(tl_error_last()) < 200);
  tl_config_free(cfg);
}

/* ---- URL masking ------------------------------------------------------ */

static void expect_mask(const char *url, const char *want)
{
  char buf[256];
  memset(buf, 'Z', sizeof buf);
  tl_url_mask(url, buf, sizeof buf);
  assert_string_equal(buf, want);
}

static void test_url_mask(void **state)
{
  (void)state;
  expect_mask("postgres://user:secret@host:5432/db",
              "postgres://user:***@host:5432/db");
  expect_mask("amqp://guest:guest@localhost:5672/", "amqp://guest:***@localhost:5672/");
  expect_mask("mysql://u:p@ss@h/db", "mysql://u:***@h/db");
  expect_mask("mysql://u:p@s@s@h:3306/db?x=1", "mysql://u:***@h:3306/db?x=1");
  expect_mask("mysql://u:p@ss@h", "mysql://u:***@h");
  expect_mask("u:p@s@", "u:***@");
  expect_mask("postgres://u:pa/ss@h/db", "postgres://u:***@h/db");
  expect_mask("postgres://u:p@h/db?email=a@b", "postgres://u:***@h/db?email=a@b");
  expect_mask("postgres://u:@h/db", "postgres://u:***@h/db");
  expect_mask("u:secret@h:5432", "u:***@h:5432");
  /* An '@' in the user name: the password is what a URL parser takes,
   * after the first ':' of the user info that ends at the last '@'. */
  expect_mask("postgres://us@er:secret@h:5432/db", "postgres://us@er:***@h:5432/db");
  /* No password: unchanged. */
  expect_mask("postgres://user@host:5432/db", "postgres://user@host:5432/db");
  expect_mask("postgres://host:5432/db", "postgres://host:5432/db");
  expect_mask("nats://localhost:4222", "nats://localhost:4222");
  expect_mask("sqlite://data/app.db", "sqlite://data/app.db");
  expect_mask("mongodb://u@h/db?authSource=admin", "mongodb://u@h/db?authSource=admin");
  expect_mask("", "");
  expect_mask("not a url", "not a url");
  expect_mask(NULL, "");

  /* Truncation keeps the buffer terminated and never writes past it. */
  char small[12];
  memset(small, 'Z', sizeof small);
  tl_url_mask("postgres://u:secret@h/db", small, 10);
  assert_string_equal(small, "postgres:");
  assert_int_equal(small[10], 'Z');
  tl_url_mask("postgres://u:secret@h/db", small, 1);
  assert_string_equal(small, "");
  small[0] = 'Q';
  tl_url_mask("postgres://u:secret@h/db", small, 0);
  assert_int_equal(small[0], 'Q');
  tl_url_mask("x", NULL, 0);
  memset(small, 'Z', sizeof small);
  tl_url_mask("p://u:secret@h", small, 11);
  assert_string_equal(small, "p://u:***@");
}

/* ---- threads ---------------------------------------------------------- */

static void *reader(void *arg)
{
  const tl_config *cfg = arg;
  for (int i = 0; i < 2000; i++) {
    int64_t v = 0;
    const char *s = NULL;
    if (tl_config_int(cfg, "PORT", 0, 1, 65535, &v) != 0 || v != 8080)
      return (void *)1;
    if (tl_config_int(cfg, "BAD", 0, 1, 65535, &v) != TL_EINVAL ||
        strcmp(tl_error_last(), "BAD: 'x' is not an integer in [1, 65535]") != 0)
      return (void *)1;
    if (tl_config_string(cfg, "NAME", NULL, &s) != 0 || strcmp(s, "svc") != 0)
      return (void *)1;
  }
  return NULL;
}

static void test_concurrent_readers(void **state)
{
  (void)state;
  tl_config *cfg = parse_ok("PORT=8080\nBAD=x\nNAME=svc\n");
  pthread_t t[4];
  for (int i = 0; i < 4; i++)
    assert_int_equal(pthread_create(&t[i], NULL, reader, cfg), 0);
  for (int i = 0; i < 4; i++) {
    void *res;
    assert_int_equal(pthread_join(t[i], &res), 0);
    assert_null(res);
  }
  tl_config_free(cfg);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_parse_basic),
    cmocka_unit_test(test_parse_export),
    cmocka_unit_test(test_parse_single_quotes),
    cmocka_unit_test(test_parse_double_quotes),
    cmocka_unit_test(test_parse_multiline),
    cmocka_unit_test(test_parse_inline_comments),
    cmocka_unit_test(test_parse_expansion),
    cmocka_unit_test(test_parse_expansion_sources),
    cmocka_unit_test(test_parse_expansion_default),
    cmocka_unit_test(test_parse_crlf),
    cmocka_unit_test(test_parse_bom),
    cmocka_unit_test(test_parse_duplicates_and_case),
    cmocka_unit_test(test_parse_many_keys),
    cmocka_unit_test(test_parse_errors),
    cmocka_unit_test(test_parse_error_origin_null),
    cmocka_unit_test(test_parse_error_changes_nothing),
    cmocka_unit_test(test_parse_limits),
    cmocka_unit_test(test_set_get),
    cmocka_unit_test(test_load_file_and_overlay),
    cmocka_unit_test(test_load_missing_file),
    cmocka_unit_test(test_load_default_path),
    cmocka_unit_test(test_load_unreadable),
    cmocka_unit_test(test_load_bad_syntax_names_path),
    cmocka_unit_test(test_get_string),
    cmocka_unit_test(test_get_int),
    cmocka_unit_test(test_get_bool),
    cmocka_unit_test(test_duration_parse),
    cmocka_unit_test(test_get_duration),
    cmocka_unit_test(test_get_url),
    cmocka_unit_test(test_get_list),
    cmocka_unit_test(test_get_enum),
    cmocka_unit_test(test_messages_never_show_passwords),
    cmocka_unit_test(test_url_mask),
    cmocka_unit_test(test_concurrent_readers),
  };
  return cmocka_run_group_tests(tests, make_tmpdir, remove_tmpdir);
}
