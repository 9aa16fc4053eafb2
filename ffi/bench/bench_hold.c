/* bench_hold: many concurrent mTLS connections held by one libconnect listener, through the C
 * API only (`make bench-ffi`). The C counterpart of core/benches/conn_memory.rs.
 *
 * Two processes, each with its own agent handle from the agent named by CONSUL_HTTP_ADDR (as
 * bench_client.c): the parent holds the server side, a listener of the service `db` on
 * 127.0.0.1:0; the child, forked at the very start of main (before any agent, service or
 * thread exists, since forking a process with threads is unsafe), holds the client service
 * `web`. HOLD connections (env, default 10000) are dialed by IN_FLIGHT threads of the child (so
 * up to IN_FLIGHT handshakes are in flight) and accepted by the parent's main thread; each
 * carries a one-byte echo (client -> server -> client) and all stay open. After a warm-up of
 * WARMUP connections (session caches, lazily built state and allocator pools), each process
 * reads its resident set (VmRSS) before and after the HOLD connections: the sum of both
 * growths gives KiB per held connection, both ends, and the child's time from the first dial
 * to the last echo gives accepts per second. Then every connection is closed cleanly
 * (close_notify both ways, each checked) and freed.
 *
 * The processes talk through two pipes (parent -> child, child -> parent), one text line per
 * message, in this order:
 *   P->C "addr A"              the listener's address
 *   C->P "fits F need N limit L"   connections that fit the child's open-file limit
 *   P->C "hold H"              the count both measure (0: the parent gave up)
 *   C->P "ready"               warm-up closed, the child's rss0 read
 *   P->C "go"                  the parent's rss0 read; the child starts dialing
 *   C->P "result rss0 R0 rss1 R1 seconds S resumed N"   then both close cleanly
 * End of file on a pipe means the other process exited: reported, and this one fails. The
 * parent always reaps the child and fails when the child did.
 *
 * Descriptors: a held connection costs one in each process (the client socket in the child,
 * the accepted socket in the parent). Each process raises its soft open-file limit to the hard
 * one and counts what fits; a HOLD that does not fit both is measured at the largest count
 * that does, and the output says so with a "SKIPPED:" line.
 *
 *   CONSUL_HTTP_ADDR=http://127.0.0.1:8500 HOLD=10000 bench_hold
 *
 * Prints "c_hold requested R held H accepts/s A rss_kib/conn K seconds S" (and a "SKIPPED:"
 * line first when HOLD did not fit). With BENCH_JSON_HOLD set, also writes those figures to
 * that file as one JSON object {requested, held, accepts_per_s, rss_kib_per_conn, seconds,
 * server_rss_kib_per_conn, client_rss_kib_per_conn}, which scripts/bench-ffi.sh folds into
 * ffi.json as `c_hold`.
 */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <connect.h>

#define IN_FLIGHT 64
#define WARMUP (IN_FLIGHT * 4)
/* Per held connection and per process: the client socket in the child, the accepted socket in
 * the parent (the listener keeps no second descriptor of it). */
#define FDS_PER_CONN 1
#define FD_MARGIN 100
#define IO_TIMEOUT_MS 10000
/* The longest the accept loop waits without a new connection before it gives up. */
#define STALL_S 30.0
/* The longest a process waits for the other's next line (the other side's steps in between
 * are bounded by the 30 s ready wait, STALL_S and IO_TIMEOUT_MS), and for the child to exit. */
#define PIPE_TIMEOUT_S 120.0
#define MSG_LEN 256

/* This process's name in messages, and the other process's role. */
static const char *who = "bench_hold";
static const char *peer = "other";

/* Prints the failure of `what` with its code and this thread's error detail. */
static void report(const char *what, connect_result rc) {
  char detail[512];
  size_t n = 0;
  if (connect_last_error_message(detail, sizeof detail, &n) != CONNECT_OK) detail[0] = 0;
  fprintf(stderr, "%s: %s: %s: %s\n", who, what, connect_result_name(rc), detail);
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

/* Writes one line (fmt already ends in '\n') to the other process. False, reported, when it
 * cannot: EPIPE (SIGPIPE is ignored) means the other process exited. */
__attribute__((format(printf, 2, 3))) static bool send_line(int fd, const char *fmt, ...) {
  char line[MSG_LEN];
  va_list ap;
  va_start(ap, fmt);
  int len = vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  if (len < 0 || (size_t)len >= sizeof line) {
    fprintf(stderr, "%s: message to the %s process too long\n", who, peer);
    return false;
  }
  size_t off = 0;
  while (off < (size_t)len) {
    ssize_t w = write(fd, line + off, (size_t)len - off);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) {
      if (errno == EPIPE)
        fprintf(stderr, "%s: the %s process exited (EPIPE on the pipe)\n", who, peer);
      else
        fprintf(stderr, "%s: write to the %s process: %s\n", who, peer, strerror(errno));
      return false;
    }
    off += (size_t)w;
  }
  return true;
}

/* Reads one line from the other process into `line` (without the '\n'), waiting at most
 * PIPE_TIMEOUT_S for it. False, reported, on end of file (the other process exited), a
 * timeout or an overlong line. One byte per read: the messages are few and short, and nothing
 * past the line is taken from the pipe. */
static bool recv_line(int fd, char *line, size_t size, const char *what) {
  double deadline = now() + PIPE_TIMEOUT_S;
  size_t len = 0;
  for (;;) {
    double left = deadline - now();
    if (left <= 0) {
      fprintf(stderr, "%s: no %s from the %s process within %.0f s\n", who, what, peer,
              PIPE_TIMEOUT_S);
      return false;
    }
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int r = poll(&p, 1, (int)(left * 1000) + 1);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      fprintf(stderr, "%s: poll on the pipe: %s\n", who, strerror(errno));
      return false;
    }
    if (r == 0) continue;
    char c;
    ssize_t got = read(fd, &c, 1);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) {
      fprintf(stderr, "%s: read from the %s process: %s\n", who, peer, strerror(errno));
      return false;
    }
    if (got == 0) {
      fprintf(stderr, "%s: the %s process exited (EOF on the pipe) while this one waited for %s\n",
              who, peer, what);
      return false;
    }
    if (c == '\n') {
      line[len] = 0;
      return true;
    }
    if (len + 1 >= size) {
      fprintf(stderr, "%s: %s from the %s process is too long\n", who, what, peer);
      return false;
    }
    line[len++] = c;
  }
}

/* Reports a line from the other process that is not the message expected. */
static void bad_line(const char *what, const char *line) {
  fprintf(stderr, "%s: expected %s from the %s process, got '%s'\n", who, what, peer, line);
}

/* Whether the other process wrote or closed its end of `fd`: while a batch is open it sends
 * nothing, so either means it failed or exited (its own messages say why). */
static bool peer_stopped(int fd) {
  struct pollfd p = {.fd = fd, .events = POLLIN};
  int r = poll(&p, 1, 0);
  return r > 0 && p.revents != 0;
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

/* Reads the peer's close_notify: a read of 0 bytes; data instead is a failure. */
static bool read_close(connect_conn *conn, const char *side, size_t i) {
  uint8_t byte;
  size_t got = 1;
  connect_result rc = connect_conn_read(conn, &byte, 1, &got);
  if (rc != CONNECT_OK) {
    char what[64];
    snprintf(what, sizeof what, "%s %zu read at close", side, i);
    report(what, rc);
    return false;
  }
  if (got != 0) {
    fprintf(stderr, "%s: %s %zu read data instead of close_notify\n", who, side, i);
    return false;
  }
  return true;
}

/* Frees n connections and their array (no clean close: the error path, or after one). */
static void free_conns(connect_conn **conns, size_t n) {
  if (!conns) return;
  for (size_t i = 0; i < n; i++) connect_conn_free(conns[i]);
  free(conns);
}

/* ---- The child: the dialing side. ---- */

/* One batch of client connections, filled by the dialing threads. */
struct clients {
  const connect_service *service;
  const char *addr;
  size_t n;
  connect_conn **conns;
  atomic_size_t next;
  atomic_bool failed;
};

/* Marks the batch failed; only the first failure is reported. */
static void fail_clients(struct clients *b, const char *what, connect_result rc) {
  if (!atomic_exchange(&b->failed, true)) report(what, rc);
}

/* A dialing thread: takes the next index, dials, sends a byte and waits for its echo. */
static void *dialer(void *arg) {
  struct clients *b = arg;
  while (!atomic_load(&b->failed)) {
    size_t i = atomic_fetch_add(&b->next, 1);
    if (i >= b->n) break;
    connect_conn *c = NULL;
    connect_result rc = connect_conn_dial_addr(b->service, b->addr, "db", IO_TIMEOUT_MS, &c);
    if (rc != CONNECT_OK) {
      fail_clients(b, "dial", rc);
      break;
    }
    b->conns[i] = c;
    uint8_t back = 0;
    if ((rc = connect_conn_set_timeout(c, IO_TIMEOUT_MS)) != CONNECT_OK) {
      fail_clients(b, "client set_timeout", rc);
      break;
    }
    if ((rc = write_byte(c, (uint8_t)i)) != CONNECT_OK) {
      fail_clients(b, "client write", rc);
      break;
    }
    if ((rc = read_byte(c, &back)) != CONNECT_OK) {
      fail_clients(b, "client read", rc);
      break;
    }
    if (back != (uint8_t)i) {
      if (!atomic_exchange(&b->failed, true))
        fprintf(stderr, "%s: connection %zu echoed %u, sent %u\n", who, i, back, (uint8_t)i);
      break;
    }
  }
  return NULL;
}

/* Opens n connections with IN_FLIGHT dialing threads. On success they are in b (close with
 * close_clients); on failure everything is freed. A failure on the server side shows up here
 * as a failed dial, read or echo (the parent frees its connections and listener). */
static bool open_clients(struct clients *b, size_t n) {
  b->n = n;
  atomic_store(&b->next, 0);
  atomic_store(&b->failed, false);
  b->conns = calloc(n, sizeof *b->conns);
  if (!b->conns) {
    fprintf(stderr, "%s: out of memory for %zu connections\n", who, n);
    return false;
  }
  pthread_t threads[IN_FLIGHT];
  size_t started = 0;
  for (; started < IN_FLIGHT && started < n; started++) {
    int e = pthread_create(&threads[started], NULL, dialer, b);
    if (e != 0) {
      fprintf(stderr, "%s: pthread_create: %s\n", who, strerror(e));
      atomic_store(&b->failed, true); /* the threads started stop at their next index */
      break;
    }
  }
  for (size_t t = 0; t < started; t++) pthread_join(threads[t], NULL);
  if (atomic_load(&b->failed)) {
    free_conns(b->conns, n);
    b->conns = NULL;
    return false;
  }
  return true;
}

/* The client's half of a clean close, checking every step: close_notify on every connection
 * first (so the server, reading them in order, never waits on one not yet sent), then the
 * server's close_notify read on each; then all are freed. */
static bool close_clients(struct clients *b) {
  bool ok = true;
  connect_result rc;
  for (size_t i = 0; ok && i < b->n; i++)
    if ((rc = connect_conn_shutdown(b->conns[i])) != CONNECT_OK) {
      report("client shutdown", rc);
      ok = false;
    }
  for (size_t i = 0; ok && i < b->n; i++) ok = read_close(b->conns[i], "client", i);
  free_conns(b->conns, b->n);
  b->conns = NULL;
  return ok;
}

/* ---- The parent: the listening side. ---- */

/* One batch of accepted connections. */
struct servers {
  size_t n;
  size_t accepted;
  connect_conn **conns;
};

/* Accepts n connections on this thread, echoing each one's byte. A timed-out accept checks
 * that the child is still there (it writes or closes its pipe only when it failed or exited)
 * and that one came within STALL_S, so a dead child never leaves this loop waiting. On
 * failure everything is freed, which also makes the child's waiting dialers fail. */
static bool accept_servers(struct servers *s, connect_listener *listener, size_t n,
                           int from_child) {
  s->n = n;
  s->accepted = 0;
  s->conns = calloc(n, sizeof *s->conns);
  if (!s->conns) {
    fprintf(stderr, "%s: out of memory for %zu connections\n", who, n);
    return false;
  }
  bool ok = true;
  double last = now();
  while (ok && s->accepted < n) {
    connect_conn *c = NULL;
    connect_result rc = connect_listener_accept(listener, 200, &c);
    if (rc == CONNECT_RESULT_TIMEOUT) {
      if (peer_stopped(from_child)) {
        fprintf(stderr, "%s: the client process stopped after %zu of %zu connections\n", who,
                s->accepted, n);
        ok = false;
      } else if (now() - last > STALL_S) {
        fprintf(stderr, "%s: no connection accepted for %.0f s (%zu of %zu)\n", who, STALL_S,
                s->accepted, n);
        ok = false;
      }
      continue;
    }
    if (rc != CONNECT_OK) {
      report("accept", rc);
      ok = false;
      break;
    }
    s->conns[s->accepted++] = c;
    last = now();
    uint8_t byte = 0;
    if ((rc = connect_conn_set_timeout(c, IO_TIMEOUT_MS)) != CONNECT_OK) {
      report("server set_timeout", rc);
      ok = false;
    } else if ((rc = read_byte(c, &byte)) != CONNECT_OK) {
      report("server read", rc);
      ok = false;
    } else if ((rc = write_byte(c, byte)) != CONNECT_OK) {
      report("server write", rc);
      ok = false;
    }
  }
  if (!ok) {
    free_conns(s->conns, s->accepted);
    s->conns = NULL;
  }
  return ok;
}

/* The server's half of a clean close, checking every step: each connection reads the client's
 * close_notify (0 bytes) and answers with its own; then all are freed. */
static bool close_servers(struct servers *s) {
  bool ok = true;
  connect_result rc;
  for (size_t i = 0; ok && i < s->n; i++) {
    if (!read_close(s->conns[i], "server", i)) {
      ok = false;
    } else if ((rc = connect_conn_shutdown(s->conns[i])) != CONNECT_OK) {
      report("server shutdown", rc);
      ok = false;
    }
  }
  free_conns(s->conns, s->n);
  s->conns = NULL;
  return ok;
}

/* ---- Both. ---- */

/* Raises the soft open-file limit to the hard one; returns the soft limit then in force
 * (RLIM_INFINITY for none), or 0 where it cannot be read. */
static rlim_t raise_nofile(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return 0;
  if (rl.rlim_cur != rl.rlim_max && rl.rlim_max != RLIM_INFINITY) {
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
      fprintf(stderr, "%s: setrlimit(RLIMIT_NOFILE): %s\n", who, strerror(errno));
  }
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return 0;
  return rl.rlim_cur;
}

/* How many of `requested` connections fit in this process: what is open now (`base`), the
 * connections and a margin for the rest. Sets *need to the descriptors all of them would take.
 * -1 (reported) where /proc/self/fd cannot be read. */
static long fitting(rlim_t limit, size_t requested, size_t *need) {
  long base = open_fds();
  if (base < 0) {
    fprintf(stderr, "%s: /proc/self/fd: %s\n", who, strerror(errno));
    return -1;
  }
  *need = requested * FDS_PER_CONN + (size_t)base + FD_MARGIN;
  if (limit == RLIM_INFINITY) return (long)requested;
  size_t spare = (size_t)limit > (size_t)base + FD_MARGIN ? (size_t)limit - base - FD_MARGIN : 0;
  size_t fits = spare / FDS_PER_CONN;
  return (long)(fits < requested ? fits : requested);
}

/* Builds an agent handle from the environment (CONSUL_HTTP_ADDR), a service `name` on it, and
 * waits until the service is ready. False, reported, on failure; what was built is in *agent
 * and *service either way, for the caller to free. */
static bool start_service(const char *name, const connect_agent **agent,
                          const connect_service **service) {
  connect_agent_config_builder *builder = connect_agent_config_builder_new_with_env();
  if (!builder) {
    fprintf(stderr, "%s: connect_agent_config_builder_new_with_env returned NULL\n", who);
    return false;
  }
  connect_result rc = connect_agent_config_builder_build(builder, agent);
  connect_agent_config_builder_free(builder);
  if (rc != CONNECT_OK) {
    report("agent", rc);
    return false;
  }
  char what[64];
  if ((rc = connect_service_new(*agent, name, service)) != CONNECT_OK) {
    snprintf(what, sizeof what, "service %s", name);
    report(what, rc);
    return false;
  }
  if ((rc = connect_service_ready_wait(*service, 30000)) != CONNECT_OK) {
    snprintf(what, sizeof what, "ready %s", name);
    report(what, rc);
    return false;
  }
  return true;
}

/* The child: the service `web` and the dialing threads. Returns the exit status. */
static int run_client(int to_server, int from_server, size_t requested) {
  who = "bench_hold (client)";
  peer = "server";
  int status = 1;
  const connect_agent *agent = NULL;
  const connect_service *web = NULL;
  struct clients b = {0};
  char line[MSG_LEN];
  char addr[128];

  rlim_t limit = raise_nofile();
  if (limit == 0) {
    fprintf(stderr, "%s: getrlimit(RLIMIT_NOFILE): %s\n", who, strerror(errno));
    return 1;
  }
  if (!start_service("web", &agent, &web)) goto out;
  if (!recv_line(from_server, line, sizeof line, "the listener address")) goto out;
  if (sscanf(line, "addr %127s", addr) != 1) {
    bad_line("'addr A'", line);
    goto out;
  }
  size_t need = 0;
  long fits = fitting(limit, requested, &need);
  if (fits < 0) goto out;
  if (!send_line(to_server, "fits %ld need %zu limit %llu\n", fits, need,
                 (unsigned long long)limit))
    goto out;
  size_t held = 0;
  if (!recv_line(from_server, line, sizeof line, "the count to hold")) goto out;
  if (sscanf(line, "hold %zu", &held) != 1) {
    bad_line("'hold H'", line);
    goto out;
  }
  if (held == 0) goto out; /* the server gave up and said why */

  b.service = web;
  b.addr = addr;
  /* Warm-up: session caches, lazily built state, the threads' allocator arenas. */
  if (!open_clients(&b, held < WARMUP ? held : WARMUP)) goto out;
  if (!close_clients(&b)) goto out;
  pause_ms(300);

  long rss0 = rss_kib();
  if (!send_line(to_server, "ready\n")) goto out;
  if (!recv_line(from_server, line, sizeof line, "'go'")) goto out;
  if (strcmp(line, "go") != 0) {
    bad_line("'go'", line);
    goto out;
  }
  double start = now();
  if (!open_clients(&b, held)) goto out;
  double seconds = now() - start;
  pause_ms(300);
  long rss1 = rss_kib();
  size_t resumed = 0;
  for (size_t i = 0; i < held; i++) resumed += connect_conn_is_resumed(b.conns[i]);
  /* rss -1 (unreadable) goes to the parent as is, which reports it. */
  if (!send_line(to_server, "result rss0 %ld rss1 %ld seconds %.6f resumed %zu\n", rss0, rss1,
                 seconds, resumed)) {
    free_conns(b.conns, b.n);
    goto out;
  }
  if (!close_clients(&b)) goto out;
  status = 0;

out:
  connect_service_free(web);
  connect_agent_free(agent);
  return status;
}

/* Reaps the child, waiting at most PIPE_TIMEOUT_S (its every step has a timeout of its own,
 * and it sees end of file on its pipe once this process closed it) before killing it. True
 * when it exited with status 0. */
static bool reap(pid_t child) {
  double deadline = now() + PIPE_TIMEOUT_S;
  int st = 0;
  for (;;) {
    pid_t r = waitpid(child, &st, WNOHANG);
    if (r == child) break;
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      fprintf(stderr, "%s: waitpid: %s\n", who, strerror(errno));
      return false;
    }
    if (now() > deadline) {
      fprintf(stderr, "%s: the client process did not exit within %.0f s; killing it\n", who,
              PIPE_TIMEOUT_S);
      kill(child, SIGKILL);
      while (waitpid(child, &st, 0) < 0 && errno == EINTR) {
      }
      return false;
    }
    pause_ms(50);
  }
  if (WIFEXITED(st) && WEXITSTATUS(st) == 0) return true;
  if (WIFEXITED(st))
    fprintf(stderr, "%s: the client process failed (exit status %d)\n", who, WEXITSTATUS(st));
  else if (WIFSIGNALED(st))
    fprintf(stderr, "%s: the client process was killed by signal %d\n", who, WTERMSIG(st));
  return false;
}

/* Writes the figures as one JSON object to `path`. */
static bool write_json(const char *path, size_t requested, size_t held, double accepts_per_s,
                       double rss_per_conn, double seconds, double server_rss_per_conn,
                       double client_rss_per_conn) {
  FILE *f = fopen(path, "w");
  if (!f) {
    perror(path);
    return false;
  }
  fprintf(f,
          "{\"requested\": %zu, \"held\": %zu, \"accepts_per_s\": %.1f, "
          "\"rss_kib_per_conn\": %.2f, \"seconds\": %.3f, \"server_rss_kib_per_conn\": %.2f, "
          "\"client_rss_kib_per_conn\": %.2f}\n",
          requested, held, accepts_per_s, rss_per_conn, seconds, server_rss_per_conn,
          client_rss_per_conn);
  if (fclose(f) != 0) {
    perror(path);
    return false;
  }
  return true;
}

/* The parent: the service `db`, its listener and the accepting main thread; prints the
 * figures. Always reaps the child. Returns the exit status. */
static int run_server(pid_t child, int to_client, int from_client, size_t requested) {
  who = "bench_hold (server)";
  peer = "client";
  int status = 1;
  const connect_agent *agent = NULL;
  const connect_service *db = NULL;
  connect_listener *listener = NULL;
  struct servers s = {0};
  connect_result rc;
  char line[MSG_LEN];
  size_t held = 0;
  long rss0 = -1, rss1 = -1, crss0 = -1, crss1 = -1;
  double seconds = 0;
  size_t resumed = 0;

  rlim_t limit = raise_nofile();
  if (limit == 0) {
    fprintf(stderr, "%s: getrlimit(RLIMIT_NOFILE): %s\n", who, strerror(errno));
    goto out;
  }
  if (!start_service("db", &agent, &db)) goto out;
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
  if (!send_line(to_client, "addr %s\n", addr)) goto out;

  /* What fits: the smaller of this process's count and the child's. */
  size_t need = 0;
  long fits = fitting(limit, requested, &need);
  if (fits < 0) goto out;
  long cfits = 0;
  size_t cneed = 0;
  unsigned long long climit = 0;
  if (!recv_line(from_client, line, sizeof line, "its descriptor count")) goto out;
  if (sscanf(line, "fits %ld need %zu limit %llu", &cfits, &cneed, &climit) != 3 || cfits < 0) {
    bad_line("'fits F need N limit L'", line);
    goto out;
  }
  /* The side that fits fewer is the one to name. */
  bool client_binds = cfits < fits;
  held = (size_t)(client_binds ? cfits : fits);
  const char *side = client_binds ? "client" : "server";
  size_t side_need = client_binds ? cneed : need;
  unsigned long long side_limit = client_binds ? climit : (unsigned long long)limit;
  if (held == 0) {
    fprintf(stderr, "%s: no room for a connection in the %s process: limit %llu\n", who, side,
            side_limit);
    send_line(to_client, "hold 0\n"); /* best effort: the child exits either way */
    goto out;
  }
  if (held < requested) {
    printf("SKIPPED: HOLD=%zu needs ~%zu descriptors in the %s process, limit %llu; "
           "measuring %zu\n",
           requested, side_need, side, side_limit, held);
    fflush(stdout);
  }
  if (!send_line(to_client, "hold %zu\n", held)) goto out;

  /* Warm-up: session caches, lazily built state, the allocator's pools. */
  if (!accept_servers(&s, listener, held < WARMUP ? held : WARMUP, from_client)) goto out;
  if (!close_servers(&s)) goto out;
  pause_ms(300);

  rss0 = rss_kib();
  if (!recv_line(from_client, line, sizeof line, "'ready'")) goto out;
  if (strcmp(line, "ready") != 0) {
    bad_line("'ready'", line);
    goto out;
  }
  if (!send_line(to_client, "go\n")) goto out;
  if (!accept_servers(&s, listener, held, from_client)) goto out;
  pause_ms(300);
  rss1 = rss_kib();
  if (!recv_line(from_client, line, sizeof line, "its figures")) {
    free_conns(s.conns, s.n);
    goto out;
  }
  if (sscanf(line, "result rss0 %ld rss1 %ld seconds %lf resumed %zu", &crss0, &crss1,
             &seconds, &resumed) != 4) {
    bad_line("'result rss0 R0 rss1 R1 seconds S resumed N'", line);
    free_conns(s.conns, s.n);
    goto out;
  }
  if (!close_servers(&s)) goto out;
  if (rss0 < 0 || rss1 < 0 || crss0 < 0 || crss1 < 0) {
    fprintf(stderr, "%s: cannot read VmRSS from /proc/self/status (server %ld %ld, client %ld "
            "%ld)\n", who, rss0, rss1, crss0, crss1);
    goto out;
  }
  if (!(seconds > 0)) {
    fprintf(stderr, "%s: the client process timed %f s\n", who, seconds);
    goto out;
  }
  status = 0;

out:
  /* Freeing the listener makes dials still in flight fail; closing the pipes ends the child's
   * waits on them: either way it exits before reap gives up on it. */
  connect_listener_free(listener);
  connect_service_free(db);
  connect_agent_free(agent);
  close(to_client);
  close(from_client);
  if (!reap(child)) status = 1;
  if (status != 0) return status;

  double accepts_per_s = (double)held / seconds;
  double server_rss_per_conn = (double)(rss1 - rss0) / (double)held;
  double client_rss_per_conn = (double)(crss1 - crss0) / (double)held;
  double rss_per_conn = server_rss_per_conn + client_rss_per_conn;
  printf("%zu mTLS connections held by one listener (server and client in two processes, %d "
         "dials in flight, %zu resumed): %.0f accepts/s, RSS %.2f KiB per connection (both "
         "ends: server %.2f + client %.2f), %.2f s\n",
         held, IN_FLIGHT, resumed, accepts_per_s, rss_per_conn, server_rss_per_conn,
         client_rss_per_conn, seconds);
  printf("c_hold requested %zu held %zu accepts/s %.1f rss_kib/conn %.2f seconds %.3f\n",
         requested, held, accepts_per_s, rss_per_conn, seconds);
  const char *json = getenv("BENCH_JSON_HOLD");
  if (json && *json &&
      !write_json(json, requested, held, accepts_per_s, rss_per_conn, seconds,
                  server_rss_per_conn, client_rss_per_conn))
    return 1;
  return 0;
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

  /* A write to the pipe of a process that exited then fails with EPIPE, reported, instead of
   * killing the writer (libconnect's own socket writes never raise SIGPIPE). */
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = SIG_IGN;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGPIPE, &sa, NULL) != 0) {
    perror("bench_hold: sigaction(SIGPIPE)");
    return 1;
  }
  int down[2], up[2]; /* parent -> child, child -> parent */
  if (pipe(down) != 0 || pipe(up) != 0) {
    perror("bench_hold: pipe");
    return 1;
  }
  /* Fork now, while this process has one thread and no libconnect state: the child builds its
   * own agent handle, the parent its own. */
  fflush(NULL);
  pid_t child = fork();
  if (child < 0) {
    perror("bench_hold: fork");
    return 1;
  }
  if (child == 0) {
    close(down[1]);
    close(up[0]);
    int st = run_client(up[1], down[0], requested);
    close(up[1]);
    close(down[0]);
    return st;
  }
  close(down[0]);
  close(up[1]);
  return run_server(child, down[1], up[0], requested);
}
