/* Shutdown signals: blocked in every thread, taken by sigtimedwait in main. */
#include <errno.h>
#include <signal.h>
#include <time.h>

#include "trellis/error.h"
#include "trellis/process.h"

static void shutdown_set(sigset_t *set)
{
  sigemptyset(set);
  sigaddset(set, SIGTERM);
  sigaddset(set, SIGINT);
  sigaddset(set, SIGHUP);
}

int tl_signals_block(void)
{
  sigset_t set;
  shutdown_set(&set);
  signal(SIGPIPE, SIG_IGN);
  int rc = pthread_sigmask(SIG_BLOCK, &set, NULL);
  return rc ? tl_error_set(TL_EINVAL, "pthread_sigmask failed (%d)", rc) : 0;
}

int tl_signals_wait(int64_t timeout_us)
{
  sigset_t set;
  shutdown_set(&set);
  for (;;) {
    int sig;
    if (timeout_us < 0) {
      sig = sigwaitinfo(&set, NULL);
    } else {
      struct timespec ts = { .tv_sec = timeout_us / 1000000,
                             .tv_nsec = (timeout_us % 1000000) * 1000 };
      sig = sigtimedwait(&set, NULL, &ts);
    }
    if (sig < 0) {
      if (errno == EINTR)
        continue;
      return 0; /* EAGAIN: the timeout passed */
    }
    /* SIGHUP is blocked so it cannot kill the service; it is not a
     * shutdown request. */
    if (sig == SIGHUP)
      continue;
    return sig;
  }
}
