/* bench_hold: many concurrent mTLS connections held by one libconnect listener, through the C
 * API only (`make bench-ffi`). The C counterpart of core/benches/conn_memory.rs.
 *
 * One process, with its identities from the agent named by CONSUL_HTTP_ADDR (as
 * bench_client.c): a listener of the service `db` on 127.0.0.1:0 and the client service
 * `web`. HOLD connections (env, default 10000) are dialed by IN_FLIGHT threads (so up to
 * IN_FLIGHT handshakes are in flight) and accepted by the main thread; each carries a one-byte
 * echo (client -> server -> client) and all stay open. After a warm-up of WARMUP connections
 * (session caches, lazily built state and allocator pools), the resident set (VmRSS) before
 * and after the HOLD connections gives KiB per held connection, both ends in this one process,
 * and the time from the first dial to the last echo gives accepts per second. Then every
 * connection is closed cleanly (close_notify both ways, each checked) and freed.
 *
 * Descriptors: a held connection costs three (the client socket, the server socket and the
 * listener's second descriptor of it, with which revocation shuts it down). The soft
 * open-file limit is raised to the hard one; a HOLD that does not fit is measured at the
 * largest count that does, and the output says so with a "SKIPPED:" line.
 *
 *   CONSUL_HTTP_ADDR=http://127.0.0.1:8500 HOLD=10000 bench_hold
 *
 * Prints "c_hold requested R held H accepts/s A rss_kib/conn K seconds S" (and a "SKIPPED:"
 * line first when HOLD did not fit). With BENCH_JSON_HOLD set, also writes those figures to
 * that file as one JSON object {requested, held, accepts_per_s, rss_kib_per_conn, seconds},
 * which scripts/bench-ffi.sh folds into ffi.json as `c_hold`.
 */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include <connect.h>

#define IN_FLIGHT 64
#define WARMUP (IN_FLIGHT * 4)
#define FDS_PER_CONN 3
#define FD_MARGIN 100
#define IO_TIMEOUT_MS 10000
/* The longest the accept loop waits without a new connection before it gives up. */
#define STALL_S 30.0

/* Prints the failure of `what` with its code and this thread's error detail. */
static void report(const char *what, connect_result rc) {
  char detail[512];
  size_t n = 0;
  if (connect_last_error_message(detail, sizeof detail, &n) != CONNECT_OK) detail[0] = 0;
  fprintf(stderr, "bench_hold: %s: %s: %s\n", what, connect_result_name(rc), detail);
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void pause_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* VmRSS of this process in KiB, from /proc/self/status; -1 where it cannot be read. */
static long rss_kib(void) {
  FILE *f = fopen("/proc/self/status", "r");
  if (!f) return -1;
  char line[256];
  long kib = -1;
  while (fgets(line, sizeof line, f))
    if (strncmp(line, "VmRSS:", 6) == 0) {
      kib = strtol(line + 6, NULL, 10);
      break;
    }
  fclose(f);
  return kib;
}

/* The number of descriptors open in this process; -1 where /proc/self/fd cannot be read. */
static long open_fds(void) {
  DIR *d = opendir("/proc/self/fd");
  if (!d) return -1;
  long n = 0;
  struct dirent *e;
  while ((e = readdir(d)))
    if (e->d_name[0] != '.') n++;
  closedir(d);
  return n - 1; /* the directory's own descriptor */
}

/* Reads exactly one byte; a clean close (0 bytes) is CONNECT_RESULT_CLOSED. */
static connect_result read_byte(connect_conn *conn, uint8_t *b) {
  size_t got = 0;
  connect_result rc = connect_conn_read(conn, b, 1, &got);
  if (rc == CONNECT_OK && got != 1) return CONNECT_RESULT_CLOSED;
  return rc;
}

static connect_result write_byte(connect_conn *conn, uint8_t b) {
  size_t sent = 0;
  connect_result rc = connect_conn_write(conn, &b, 1, &sent);
  if (rc == CONNECT_OK && sent != 1) return CONNECT_RESULT_IO;
  return rc;
}

/* One batch of connections: the dialing threads fill `clients`, the main thread `servers`. */
struct batch {
  const connect_service *client;
  const char *addr;
  size_t n;
  connect_conn **clients;
  connect_conn **servers;
  size_t accepted;
  atomic_size_t next;
  atomic_bool failed;
  atomic_bool stop;
};

/* Marks the batch failed; only the first failure is reported. */
static void fail_batch(struct batch *b, const char *what, connect_result rc) {
  if (!atomic_exchange(&b->failed, true) && !atomic_load(&b->stop)) report(what, rc);
}

/* A dialing thread: takes the next index, dials, sends a byte and waits for its echo. */
static void *dialer(void *arg) {
  struct batch *b = arg;
  while (!atomic_load(&b->stop) && !atomic_load(&b->failed)) {
    size_t i = atomic_fetch_add(&b->next, 1);
    if (i >= b->n) break;
    connect_conn *c = NULL;
    connect_result rc = connect_conn_dial_addr(b->client, b->addr, "db", IO_TIMEOUT_MS, &c);
    if (rc != CONNECT_OK) {
      fail_batch(b, "dial", rc);
      break;
    }
    b->clients[i] = c;
    if (atomic_load(&b->stop)) break;
    uint8_t back = 0;
    if ((rc = connect_conn_set_timeout(c, IO_TIMEOUT_MS)) != CONNECT_OK) {
      fail_batch(b, "client set_timeout", rc);
      break;
    }
    if ((rc = write_byte(c, (uint8_t)i)) != CONNECT_OK) {
      fail_batch(b, "client write", rc);
      break;
    }
    if ((rc = read_byte(c, &back)) != CONNECT_OK) {
      fail_batch(b, "client read", rc);
      break;
    }
    if (back != (uint8_t)i) {
      fprintf(stderr, "bench_hold: connection %zu echoed %u, sent %u\n", i, back, (uint8_t)i);
      atomic_store(&b->failed, true);
      break;
    }
  }
  return NULL;
}

/* Frees every connection of the batch (no clean close: the error path). */
static void free_batch(struct batch *b) {
  for (size_t i = 0; i < b->n; i++) {
    connect_conn_free(b->servers[i]);
    connect_conn_free(b->clients[i]);
  }
  free(b->servers);
  free(b->clients);
  b->servers = b->clients = NULL;
}

/* Opens n connections: IN_FLIGHT dialing threads, accepted and echoed by this thread. On
 * success the connections are in b (free with close_batch); on failure everything is freed. */
static bool open_batch(struct batch *b, connect_listener *listener, size_t n) {
  b->n = n;
  b->accepted = 0;
  atomic_store(&b->next, 0);
  atomic_store(&b->failed, false);
  atomic_store(&b->stop, false);
  b->clients = calloc(n, sizeof *b->clients);
  b->servers = calloc(n, sizeof *b->servers);
  if (!b->clients || !b->servers) {
    fprintf(stderr, "bench_hold: out of memory for %zu connections\n", n);
    free(b->clients);
    free(b->servers);
    return false;
  }
  pthread_t threads[IN_FLIGHT];
  size_t started = 0;
  bool ok = true;
  for (; started < IN_FLIGHT && started < n; started++) {
    int e = pthread_create(&threads[started], NULL, dialer, b);
    if (e != 0) {
      fprintf(stderr, "bench_hold: pthread_create: %s\n", strerror(e));
      ok = false;
      break;
    }
  }
  double last = now();
  while (ok && b->accepted < n) {
    connect_conn *s = NULL;
    connect_result rc = connect_listener_accept(listener, 200, &s);
    if (rc == CONNECT_RESULT_TIMEOUT) {
      if (atomic_load(&b->failed)) {
        ok = false;
      } else if (now() - last > STALL_S) {
        fprintf(stderr, "bench_hold: no connection accepted for %.0f s (%zu of %zu)\n", STALL_S,
                b->accepted, n);
        ok = false;
      }
      continue;
    }
    if (rc != CONNECT_OK) {
      report("accept", rc);
      ok = false;
      break;
    }
    b->servers[b->accepted++] = s;
    last = now();
    uint8_t byte = 0;
    if ((rc = connect_conn_set_timeout(s, IO_TIMEOUT_MS)) != CONNECT_OK) {
      report("server set_timeout", rc);
      ok = false;
    } else if ((rc = read_byte(s, &byte)) != CONNECT_OK) {
      report("server read", rc);
      ok = false;
    } else if ((rc = write_byte(s, byte)) != CONNECT_OK) {
      report("server write", rc);
      ok = false;
    }
  }
  if (!ok) {
    /* Stop the dialers; a client waiting for its echo gets EOF once the servers are freed. */
    atomic_store(&b->stop, true);
    for (size_t i = 0; i < b->accepted; i++) {
      connect_conn_free(b->servers[i]);
      b->servers[i] = NULL;
    }
  }
  for (size_t t = 0; t < started; t++) pthread_join(threads[t], NULL);
  if (ok && atomic_load(&b->failed)) ok = false;
  if (!ok) free_batch(b);
  return ok;
}

/* Closes the batch cleanly, checking every step: the clients send close_notify, each server
 * reads it (EOF) and answers with its own, each client reads that; then all are freed. */
static bool close_batch(struct batch *b) {
  bool ok = true;
  connect_result rc;
  for (size_t i = 0; ok && i < b->n; i++)
    if ((rc = connect_conn_shutdown(b->clients[i])) != CONNECT_OK) {
      report("client shutdown", rc);
      ok = false;
    }
  for (size_t i = 0; ok && i < b->n; i++) {
    uint8_t byte;
    size_t got = 1;
    if ((rc = connect_conn_read(b->servers[i], &byte, 1, &got)) != CONNECT_OK) {
      report("server read at close", rc);
      ok = false;
    } else if (got != 0) {
      fprintf(stderr, "bench_hold: server %zu read data instead of close_notify\n", i);
      ok = false;
    } else if ((rc = connect_conn_shutdown(b->servers[i])) != CONNECT_OK) {
      report("server shutdown", rc);
      ok = false;
    }
  }
  for (size_t i = 0; ok && i < b->n; i++) {
    uint8_t byte;
    size_t got = 1;
    if ((rc = connect_conn_read(b->clients[i], &byte, 1, &got)) != CONNECT_OK) {
      report("client read at close", rc);
      ok = false;
    } else if (got != 0) {
      fprintf(stderr, "bench_hold: client %zu read data instead of close_notify\n", i);
      ok = false;
    }
  }
  free_batch(b);
  return ok;
}

/* Raises the soft open-file limit to the hard one; returns the soft limit then in force
 * (RLIM_INFINITY for none), or 0 where it cannot be read. */
static rlim_t raise_nofile(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return 0;
  if (rl.rlim_cur != rl.rlim_max && rl.rlim_max != RLIM_INFINITY) {
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) perror("bench_hold: setrlimit(RLIMIT_NOFILE)");
  }
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return 0;
  return rl.rlim_cur;
}

/* Writes the figures as one JSON object to `path`. */
static bool write_json(const char *path, size_t requested, size_t held, double accepts_per_s,
                       double rss_per_conn, double seconds) {
  FILE *f = fopen(path, "w");
  if (!f) {
    perror(path);
    return false;
  }
  fprintf(f,
          "{\"requested\": %zu, \"held\": %zu, \"accepts_per_s\": %.1f, "
          "\"rss_kib_per_conn\": %.2f, \"seconds\": %.3f}\n",
          requested, held, accepts_per_s, rss_per_conn, seconds);
  if (fclose(f) != 0) {
    perror(path);
    return false;
  }
  return true;
}

int main(int argc, char **argv) {
  (void)argv;
  if (argc != 1) {
    fprintf(stderr, "usage: [HOLD=n] [BENCH_JSON_HOLD=file] bench_hold\n");
    return 2;
  }
  const char *env = getenv("HOLD");
  char *end = NULL;
  long hold = env && *env ? strtol(env, &end, 10) : 10000;
  if (hold <= 0 || (end && *end)) {
    fprintf(stderr, "bench_hold: HOLD must be a positive number, not '%s'\n", env);
    return 2;
  }
  size_t requested = (size_t)hold;
  rlim_t limit = raise_nofile();
  if (limit == 0) {
    perror("bench_hold: getrlimit(RLIMIT_NOFILE)");
    return 1;
  }

  int status = 1;
  const connect_agent *agent = NULL;
  const connect_service *db = NULL, *web = NULL;
  connect_listener *listener = NULL;
  struct batch b = {0};
  connect_result rc;

  connect_agent_config_builder *builder = connect_agent_config_builder_new_with_env();
  if (!builder) {
    fprintf(stderr, "bench_hold: connect_agent_config_builder_new_with_env returned NULL\n");
    return 1;
  }
  rc = connect_agent_config_builder_build(builder, &agent);
  connect_agent_config_builder_free(builder);
  if (rc != CONNECT_OK) {
    report("agent", rc);
    return 1;
  }
  if ((rc = connect_service_new(agent, "db", &db)) != CONNECT_OK) {
    report("service db", rc);
    goto out;
  }
  if ((rc = connect_service_new(agent, "web", &web)) != CONNECT_OK) {
    report("service web", rc);
    goto out;
  }
  if ((rc = connect_service_ready_wait(db, 30000)) != CONNECT_OK) {
    report("ready db", rc);
    goto out;
  }
  if ((rc = connect_service_ready_wait(web, 30000)) != CONNECT_OK) {
    report("ready web", rc);
    goto out;
  }
  if ((rc = connect_listener_new(db, "127.0.0.1:0", &listener)) != CONNECT_OK) {
    report("listen", rc);
    goto out;
  }
  char addr[128];
  size_t addr_len = 0;
  if ((rc = connect_listener_get_local_addr(listener, addr, sizeof addr, &addr_len)) !=
      CONNECT_OK) {
    report("local address", rc);
    goto out;
  }

  /* What fits: everything open now, HOLD connections and a margin for the rest. */
  long base = open_fds();
  if (base < 0) {
    perror("bench_hold: /proc/self/fd");
    goto out;
  }
  size_t held = requested;
  if (limit != RLIM_INFINITY) {
    size_t need = requested * FDS_PER_CONN + (size_t)base + FD_MARGIN;
    size_t spare = (size_t)limit > (size_t)base + FD_MARGIN ? (size_t)limit - base - FD_MARGIN : 0;
    size_t fits = spare / FDS_PER_CONN;
    if (fits == 0) {
      fprintf(stderr, "bench_hold: no room for a connection: limit %llu, %ld open\n",
              (unsigned long long)limit, base);
      goto out;
    }
    if (fits < requested) {
      held = fits;
      printf("SKIPPED: HOLD=%zu needs ~%zu descriptors, limit %llu; measuring %zu\n", requested,
             need, (unsigned long long)limit, held);
      fflush(stdout);
    }
  }

  b.client = web;
  b.addr = addr;
  /* Warm-up: session caches, lazily built state, the threads' allocator arenas. */
  if (!open_batch(&b, listener, held < WARMUP ? held : WARMUP)) goto out;
  if (!close_batch(&b)) goto out;
  pause_ms(300);

  long rss0 = rss_kib();
  double start = now();
  if (!open_batch(&b, listener, held)) goto out;
  double seconds = now() - start;
  pause_ms(300);
  long rss1 = rss_kib();
  size_t resumed = 0;
  for (size_t i = 0; i < held; i++) resumed += connect_conn_is_resumed(b.clients[i]);
  if (!close_batch(&b)) goto out;
  if (rss0 < 0 || rss1 < 0) {
    fprintf(stderr, "bench_hold: cannot read VmRSS from /proc/self/status\n");
    goto out;
  }

  double accepts_per_s = (double)held / seconds;
  double rss_per_conn = (double)(rss1 - rss0) / (double)held;
  printf("%zu mTLS connections held by one listener (%d dials in flight, %zu resumed): "
         "%.0f accepts/s, RSS %.2f KiB per connection (both ends), %.2f s\n",
         held, IN_FLIGHT, resumed, accepts_per_s, rss_per_conn, seconds);
  printf("c_hold requested %zu held %zu accepts/s %.1f rss_kib/conn %.2f seconds %.3f\n",
         requested, held, accepts_per_s, rss_per_conn, seconds);
  const char *json = getenv("BENCH_JSON_HOLD");
  if (json && *json &&
      !write_json(json, requested, held, accepts_per_s, rss_per_conn, seconds))
    goto out;
  status = 0;

out:
  connect_listener_free(listener);
  connect_service_free(web);
  connect_service_free(db);
  connect_agent_free(agent);
  return status;
}
