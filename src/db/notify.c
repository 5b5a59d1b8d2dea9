/* LISTEN/NOTIFY: a listener holds a connection of its own (outside the
 * pool, since it blocks waiting), and reconnects after the connection is
 * lost, telling the caller so it can re-read what it may have missed. */
#include <stdlib.h>
#include <string.h>

#include "db/db_int.h"

struct tl_db_listener {
  tl_db *db;
  tl_conn *conn;  /* NULL after a failure, until the next wait reconnects */
  char channel[64];
};

static int check_channel(const char *channel)
{
  if (!channel || !tl__sql_ident_ok(channel) || strlen(channel) >= 64)
    return tl_error_set(TL_EINVAL, "listen: channel '%.80s' is not an identifier "
                        "(letters, digits, '_'; at most 63 characters)",
                        channel ? channel : "(null)");
  return 0;
}

/* Open the listener's connection and subscribe it. */
static int attach(tl_db_listener *l)
{
  const tl__db_opts *o = &l->db->opts;
  tl__target t = { .url = &l->db->url, .name = o->name, .role = "listener",
                   .connect_timeout_us = o->connect_timeout_us };
  tl_conn *c = NULL;
  int rc = l->db->be->connect(&t, &c);
  if (rc == 0 && (rc = l->db->be->listen(c, l->channel)) != 0) {
    l->db->be->disconnect(c);
    c = NULL;
  }
  l->conn = c;
  return rc;
}

int tl_db_listen(tl_db *db, const char *channel, tl_db_listener **out)
{
  tl__db_class_clear();
  if (!db || !out)
    return tl_error_set(TL_EINVAL, "tl_db_listen: NULL argument");
  if (!db->be->listen)
    return tl_error_set(TL_EUNSUPP, "listen: %s has no LISTEN/NOTIFY; poll instead",
                        db->be->name);
  int rc = check_channel(channel);
  if (rc)
    return rc;
  tl_db_listener *l = calloc(1, sizeof *l);
  if (!l)
    return tl_error_set(TL_ENOMEM, "out of memory");
  l->db = db;
  memcpy(l->channel, channel, strlen(channel) + 1);
  if ((rc = attach(l)) != 0) {
    free(l);
    return rc;
  }
  *out = l;
  return 0;
}

int tl_db_listener_wait(tl_db_listener *l, int64_t timeout_us, char *payload, size_t size)
{
  if (!l)
    return tl_error_set(TL_EINVAL, "tl_db_listener_wait: NULL listener");
  if (size)
    payload[0] = '\0';
  if (!l->conn) {
    /* Lost before (and reported then): subscribe again. */
    int rc = attach(l);
    if (rc)
      return rc;
  }
  int rc = l->db->be->wait_notify(l->conn, timeout_us, payload, size);
  if (rc < 0) {
    l->db->be->disconnect(l->conn);
    l->conn = NULL;
    return TL_ECONNECT;
  }
  return rc;
}

void tl_db_listener_close(tl_db_listener *l)
{
  if (!l)
    return;
  if (l->conn)
    l->db->be->disconnect(l->conn);
  free(l);
}

int tl_db_notify(tl_db *db, const char *channel, const char *payload)
{
  tl__db_class_clear();
  if (!db)
    return tl_error_set(TL_EINVAL, "tl_db_notify: NULL database");
  int rc = check_channel(channel);
  if (rc)
    return rc;
  if (!db->be->listen)
    return 0; /* nobody can listen here: listeners poll */
  return tl_db_exec(db, NULL, "SELECT pg_notify($1, $2)",
                    TL_ARGS(tl_text(channel), tl_text(payload ? payload : "")));
}
