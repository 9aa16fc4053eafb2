#define _POSIX_C_SOURCE 200809L
/* db: the demo's database stand-in, a Connect-native echo service in C.
 *
 * It takes its identity from the agent at CONSUL_HTTP_ADDR, listens with mutual TLS, answers
 * every line a client sends with "db got: <line>", and serves each client on its own thread so
 * a long-lived connection never blocks the next handshake. Clients that the intentions refuse
 * are turned away inside the TLS handshake by libconnect: this program never sees them (run it
 * with LIBCONNECT_LOG=info to see libconnect's log of each refusal and its reason).
 *
 *   db [-listen ADDR] [-service NAME] [-root-change-jitter-ms MS]
 *
 * It prints one line per event, for the demo's transcript: the address it listens on, each
 * accepted client, each change of its certificate or roots, and each closed connection.
 * SIGINT or SIGTERM stops it: it frees its listener, service and agent; connections still
 * being served end with the process.
 */
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <connect.h>

static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;

/* One whole line per event, also when several threads report at once. */
static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  pthread_mutex_lock(&out_lock);
  vprintf(fmt, ap);
  putchar('\n');
  fflush(stdout);
  pthread_mutex_unlock(&out_lock);
  va_end(ap);
}

static void fail(const char *what, connect_result rc) {
  char detail[512];
  size_t n = 0;
  if (connect_last_error_message(detail, sizeof detail, &n) != CONNECT_OK) detail[0] = 0;
  fprintf(stderr, "db: %s: %s: %s\n", what, connect_result_name(rc), detail);
  exit(1);
}

#define TRY(what, expr)                        \
  do {                                         \
    connect_result rc_ = (expr);               \
    if (rc_ != CONNECT_OK) fail((what), rc_);  \
  } while (0)

/* Called on libconnect's thread after a new leaf or new roots: only non-blocking getters. */
static void on_change(void *userdata, const connect_service_change_params *p) {
  (void)userdata;
  say("db: identity changed (generation %" PRIu64 "): leaf serial %.*s, %zu trusted root(s); "
      "open connections stay up",
      p->generation, (int)p->serial.len, p->serial.len ? p->serial.data : "", p->roots_count);
}

struct client {
  connect_conn *conn;
  char peer[256];
};

static void *serve(void *arg) {
  struct client *c = arg;
  char line[4096];
  size_t used = 0;
  const char *why = "the client closed it";
  for (;;) {
    size_t got = 0;
    connect_result rc = connect_conn_read(c->conn, (uint8_t *)line + used, sizeof line - 1 - used, &got);
    if (rc != CONNECT_OK) {
      /* libconnect closes a live connection whose peer the intentions no longer allow. */
      why = connect_result_name(rc);
      break;
    }
    if (got == 0) break;
    used += got;
    char *nl;
    while ((nl = memchr(line, '\n', used)) != NULL) {
      *nl = 0;
      char reply[4200];
      int n = snprintf(reply, sizeof reply, "db got: %s\n", line);
      size_t sent = 0;
      if (n < 0 || connect_conn_write(c->conn, (const uint8_t *)reply, (size_t)n, &sent) != CONNECT_OK) {
        why = "write failed";
        goto done;
      }
      size_t rest = used - (size_t)(nl + 1 - line);
      memmove(line, nl + 1, rest);
      used = rest;
    }
    if (used == sizeof line - 1) used = 0; /* an over-long line is dropped, not fatal */
  }
done:
  say("db: connection from %s ended (%s)", c->peer, why);
  connect_conn_shutdown(c->conn);
  connect_conn_free(c->conn);
  free(c);
  return NULL;
}

int main(int argc, char **argv) {
  const char *listen_addr = "127.0.0.1:0", *name = "db";
  long jitter_ms = -1;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (strcmp(argv[i], "-listen") == 0) listen_addr = argv[i + 1];
    else if (strcmp(argv[i], "-service") == 0) name = argv[i + 1];
    else if (strcmp(argv[i], "-root-change-jitter-ms") == 0) jitter_ms = strtol(argv[i + 1], NULL, 10);
    else {
      fprintf(stderr, "usage: db [-listen ADDR] [-service NAME] [-root-change-jitter-ms MS]\n");
      return 2;
    }
  }
  if (argc % 2 == 0) {
    fprintf(stderr, "usage: db [-listen ADDR] [-service NAME] [-root-change-jitter-ms MS]\n");
    return 2;
  }

  /* SIGINT and SIGTERM are blocked in every thread (libconnect's inherit the mask) and polled
     with sigtimedwait between accepts, so no handler runs inside library code. */
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop, NULL);

  connect_agent_config_builder *builder = connect_agent_config_builder_new_with_env();
  if (jitter_ms >= 0)
    TRY("jitter", connect_agent_config_builder_set_root_change_jitter_ms(builder, (uint64_t)jitter_ms));
  const connect_agent *agent = NULL;
  TRY("starting the agent", connect_agent_config_builder_build(builder, &agent));
  connect_agent_config_builder_free(builder);

  const connect_service *service = NULL;
  TRY("service", connect_service_new(agent, name, &service));
  TRY("waiting for a certificate", connect_service_ready_wait(service, 30000));
  TRY("change callback", connect_service_set_change_callback(service, on_change, NULL, NULL));

  connect_listener *listener = NULL;
  TRY("listen", connect_listener_new(service, listen_addr, &listener));
  char addr[128];
  size_t n = 0;
  TRY("address", connect_listener_get_local_addr(listener, addr, sizeof addr, &n));
  say("db: listening on %s with mutual TLS (registered in the catalog as \"%s\")", addr, name);

  for (;;) {
    connect_conn *conn = NULL;
    /* A short accept timeout lets the loop notice a pending SIGINT/SIGTERM. */
    connect_result rc = connect_listener_accept(listener, 200, &conn);
    if (rc == CONNECT_RESULT_TIMEOUT) {
      struct timespec zero = {0, 0};
      siginfo_t info;
      if (sigtimedwait(&stop, &info, &zero) >= 0) break;
      continue;
    }
    if (rc != CONNECT_OK) fail("accept", rc);
    struct client *c = calloc(1, sizeof *c);
    if (c == NULL) {
      connect_conn_free(conn);
      continue;
    }
    c->conn = conn;
    connect_str peer = connect_conn_get_peer_id(conn);
    snprintf(c->peer, sizeof c->peer, "%.*s", (int)peer.len, peer.data);
    say("db: accepted %s (its certificate checked and the intention allowed it in the handshake)", c->peer);
    pthread_t t;
    if (pthread_create(&t, NULL, serve, c) != 0) {
      connect_conn_free(conn);
      free(c);
      continue;
    }
    pthread_detach(t);
  }

  say("db: stopping");
  connect_listener_free(listener);
  connect_service_free(service);
  connect_agent_free(agent);
  return 0;
}
