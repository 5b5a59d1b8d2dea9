/* One error taxonomy for every backend: SQLSTATE, MySQL errno and SQLite
 * extended result codes map to a class, and a class to a status. */
#include <errmsg.h>
#include <mysqld_error.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "db/db_int.h"

static _Thread_local tl_db_error_class last_class;

tl_db_error_class tl_db_error_last_class(void) { return last_class; }

const char *tl_db_error_class_name(tl_db_error_class c)
{
  switch (c) {
  case TL_DB_ERR_NONE: return "none";
  case TL_DB_ERR_UNIQUE: return "unique";
  case TL_DB_ERR_FOREIGN_KEY: return "foreign_key";
  case TL_DB_ERR_NOT_NULL: return "not_null";
  case TL_DB_ERR_CHECK: return "check";
  case TL_DB_ERR_SERIALIZATION: return "serialization";
  case TL_DB_ERR_DEADLOCK: return "deadlock";
  case TL_DB_ERR_BUSY: return "busy";
  case TL_DB_ERR_CONNECTION_LOST: return "connection_lost";
  case TL_DB_ERR_TIMEOUT: return "timeout";
  case TL_DB_ERR_SYNTAX: return "syntax";
  case TL_DB_ERR_OTHER: return "other";
  }
  return "other";
}

int tl__db_class_status(tl_db_error_class c)
{
  switch (c) {
  case TL_DB_ERR_NONE: return 0;
  case TL_DB_ERR_UNIQUE: return TL_ECONFLICT;
  case TL_DB_ERR_FOREIGN_KEY:
  case TL_DB_ERR_NOT_NULL:
  case TL_DB_ERR_CHECK: return TL_ECONSTRAINT;
  case TL_DB_ERR_SERIALIZATION:
  case TL_DB_ERR_DEADLOCK:
  case TL_DB_ERR_BUSY: return TL_ERETRY;
  case TL_DB_ERR_CONNECTION_LOST: return TL_ECONNECT;
  case TL_DB_ERR_TIMEOUT: return TL_ETIMEOUT;
  case TL_DB_ERR_SYNTAX: return TL_EINVAL;
  case TL_DB_ERR_OTHER: return TL_EIO;
  }
  return TL_EIO;
}

int tl__db_class_set(tl_db_error_class cls)
{
  last_class = cls;
  return tl__db_class_status(cls);
}

void tl__db_class_clear(void) { last_class = TL_DB_ERR_NONE; }

int tl__db_fail(tl_db_error_class cls, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  tl_error_setv(tl__db_class_status(cls), fmt, ap);
  va_end(ap);
  return tl__db_class_set(cls);
}

tl_db_error_class tl__class_from_sqlstate(const char *s)
{
  if (!s || strlen(s) != 5) return TL_DB_ERR_OTHER;
  static const struct { const char *state; tl_db_error_class cls; } exact[] = {
    { "23505", TL_DB_ERR_UNIQUE },        /* unique_violation */
    { "23P01", TL_DB_ERR_UNIQUE },        /* exclusion_violation */
    { "23503", TL_DB_ERR_FOREIGN_KEY },   /* foreign_key_violation */
    { "23502", TL_DB_ERR_NOT_NULL },      /* not_null_violation */
    { "23514", TL_DB_ERR_CHECK },         /* check_violation */
    { "40001", TL_DB_ERR_SERIALIZATION }, /* serialization_failure */
    { "40P01", TL_DB_ERR_DEADLOCK },      /* deadlock_detected */
    { "55P03", TL_DB_ERR_BUSY },          /* lock_not_available */
    { "57014", TL_DB_ERR_TIMEOUT },       /* query_canceled (statement_timeout) */
    { "25P03", TL_DB_ERR_TIMEOUT },       /* idle_in_transaction_session_timeout */
    { "57P01", TL_DB_ERR_CONNECTION_LOST },/* admin_shutdown (pg_terminate_backend) */
    { "57P02", TL_DB_ERR_CONNECTION_LOST },/* crash_shutdown */
    { "57P03", TL_DB_ERR_CONNECTION_LOST },/* cannot_connect_now */
    { "42501", TL_DB_ERR_OTHER },         /* insufficient_privilege */
  };
  for (size_t i = 0; i < sizeof exact / sizeof exact[0]; i++)
    if (memcmp(s, exact[i].state, 5) == 0) return exact[i].cls;
  if (memcmp(s, "08", 2) == 0) return TL_DB_ERR_CONNECTION_LOST;
  if (memcmp(s, "42", 2) == 0) return TL_DB_ERR_SYNTAX;
  return TL_DB_ERR_OTHER;
}

tl_db_error_class tl__class_from_mysql(unsigned err)
{
  switch (err) {
  case ER_DUP_ENTRY:
  case ER_DUP_KEY:
  case ER_DUP_ENTRY_WITH_KEY_NAME: return TL_DB_ERR_UNIQUE;
  case ER_ROW_IS_REFERENCED:
  case ER_NO_REFERENCED_ROW:
  case ER_ROW_IS_REFERENCED_2:
  case ER_NO_REFERENCED_ROW_2: return TL_DB_ERR_FOREIGN_KEY;
  case ER_BAD_NULL_ERROR:
  case ER_NO_DEFAULT_FOR_FIELD: return TL_DB_ERR_NOT_NULL;
  case ER_CONSTRAINT_FAILED:
  case 3819: /* MySQL 8 ER_CHECK_CONSTRAINT_VIOLATED */
    return TL_DB_ERR_CHECK;
  case ER_LOCK_DEADLOCK: return TL_DB_ERR_DEADLOCK;
  case ER_CHECKREAD: return TL_DB_ERR_SERIALIZATION;
  case ER_LOCK_WAIT_TIMEOUT: return TL_DB_ERR_BUSY;
  case ER_STATEMENT_TIMEOUT:
  case ER_QUERY_INTERRUPTED:
  case 3024: /* MySQL ER_QUERY_TIMEOUT */
    return TL_DB_ERR_TIMEOUT;
  case CR_SERVER_GONE_ERROR:
  case CR_SERVER_LOST:
  case CR_SERVER_LOST_EXTENDED:
  case CR_CONNECTION_ERROR:
  case CR_CONN_HOST_ERROR:
  case ER_CONNECTION_KILLED:
  case ER_SERVER_SHUTDOWN:
  case 4031: /* disconnected by the server for inactivity */
    return TL_DB_ERR_CONNECTION_LOST;
  case ER_PARSE_ERROR:
  case ER_NO_SUCH_TABLE:
  case ER_BAD_FIELD_ERROR:
  case ER_BAD_TABLE_ERROR:
  case ER_SP_DOES_NOT_EXIST:
  case ER_WRONG_VALUE_COUNT_ON_ROW:
  case ER_EMPTY_QUERY: return TL_DB_ERR_SYNTAX;
  default: return TL_DB_ERR_OTHER;
  }
}

tl_db_error_class tl__class_from_sqlite(int ext)
{
  switch (ext) {
  case SQLITE_CONSTRAINT_UNIQUE:
  case SQLITE_CONSTRAINT_PRIMARYKEY:
  case SQLITE_CONSTRAINT_ROWID: return TL_DB_ERR_UNIQUE;
  case SQLITE_CONSTRAINT_FOREIGNKEY: return TL_DB_ERR_FOREIGN_KEY;
  case SQLITE_CONSTRAINT_NOTNULL: return TL_DB_ERR_NOT_NULL;
  case SQLITE_CONSTRAINT_CHECK: return TL_DB_ERR_CHECK;
  case SQLITE_BUSY_SNAPSHOT: return TL_DB_ERR_SERIALIZATION;
  default: break;
  }
  switch (ext & 0xff) {
  case SQLITE_BUSY:
  case SQLITE_LOCKED: return TL_DB_ERR_BUSY;
  case SQLITE_INTERRUPT: return TL_DB_ERR_TIMEOUT;
  case SQLITE_ERROR: return TL_DB_ERR_SYNTAX;
  case SQLITE_CANTOPEN:
  case SQLITE_NOTADB: return TL_DB_ERR_CONNECTION_LOST;
  default: return TL_DB_ERR_OTHER;
  }
}

tl_db_error_class tl__class_from_mongo(unsigned code)
{
  switch (code) {
  case 11000: case 11001: case 12582: return TL_DB_ERR_UNIQUE; /* DuplicateKey */
  case 112: /* WriteConflict */
  case 251: /* NoSuchTransaction: aborted under us */
    return TL_DB_ERR_SERIALIZATION;
  case 50: return TL_DB_ERR_TIMEOUT;           /* MaxTimeMSExpired */
  case 121: return TL_DB_ERR_CHECK;            /* DocumentValidationFailure */
  case 2: case 9: case 17287: return TL_DB_ERR_SYNTAX; /* BadValue, FailedToParse */
  case 6: case 7: case 89: case 91: case 189: case 10107: case 11600: case 13435:
    return TL_DB_ERR_CONNECTION_LOST;          /* unreachable, stepping down, shutdown */
  default: return TL_DB_ERR_OTHER;
  }
}
