/* bench_client: the C side of the C-vs-Rust binding benchmark (`make bench-ffi`).
 *
 * Against the Rust server of core/examples/bench_echo.rs, with its identity from the agent
 * named by CONSUL_HTTP_ADDR: N sequential dial + 1-byte echo handshakes, then MIB MiB echoed
 * in 64 KiB lock-step on one connection -- the same work as `bench_echo client`.
 *
 *   bench_client NAME TARGET ADDR N MIB
 *
 * Prints "c handshakes/s H MiB/s M".
 */
#define _POSIX_C_SOURCE 199309L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <connect.h>

#define CHUNK (64 * 1024)

static int fail(const char *what, connect_result rc) {
  char detail[512];
  size_t n = 0;
  if (connect_last_error_message(detail, sizeof detail, &n) != CONNECT_OK) detail[0] = 0;
  fprintf(stderr, "bench_client: %s: %s: %s\n", what, connect_result_name(rc), detail);
  return 1;
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static connect_result read_exact(connect_conn *conn, uint8_t *buf, size_t len) {
  while (len > 0) {
    size_t got = 0;
    connect_result rc = connect_conn_read(conn, buf, len, &got);
    if (rc != CONNECT_OK) return rc;
    if (got == 0) return CONNECT_RESULT_CLOSED;
    buf += got;
    len -= got;
  }
  return CONNECT_OK;
}

int main(int argc, char **argv) {
  if (argc != 6) {
    fprintf(stderr, "usage: bench_client NAME TARGET ADDR N MIB\n");
    return 2;
  }
  const char *name = argv[1], *target = argv[2], *addr = argv[3];
  long n = strtol(argv[4], NULL, 10), mib = strtol(argv[5], NULL, 10);

  connect_agent_config_builder *builder = connect_agent_config_builder_new_with_env();
  const connect_agent *agent = NULL;
  connect_result rc = connect_agent_config_builder_build(builder, &agent);
  connect_agent_config_builder_free(builder);
  if (rc != CONNECT_OK) return fail("agent", rc);
  const connect_service *service = NULL;
  if ((rc = connect_service_new(agent, name, &service)) != CONNECT_OK) return fail("service", rc);
  if ((rc = connect_service_ready_wait(service, 30000)) != CONNECT_OK) return fail("ready", rc);

  double start = now();
  for (long i = 0; i < n; i++) {
    connect_conn *conn = NULL;
    if ((rc = connect_conn_dial_addr(service, addr, target, 10000, &conn)) != CONNECT_OK)
      return fail("dial", rc);
    uint8_t b = 7;
    size_t sent = 0;
    if ((rc = connect_conn_write(conn, &b, 1, &sent)) != CONNECT_OK) return fail("write", rc);
    if ((rc = read_exact(conn, &b, 1)) != CONNECT_OK) return fail("read", rc);
    connect_conn_shutdown(conn);
    connect_conn_free(conn);
  }
  double hs = (double)n / (now() - start);

  connect_conn *conn = NULL;
  if ((rc = connect_conn_dial_addr(service, addr, target, 10000, &conn)) != CONNECT_OK)
    return fail("dial", rc);
  static uint8_t out[CHUNK], back[CHUNK];
  memset(out, 0x5a, sizeof out);
  size_t total = (size_t)mib * 1024 * 1024, done = 0;
  start = now();
  while (done < total) {
    size_t sent = 0;
    if ((rc = connect_conn_write(conn, out, CHUNK, &sent)) != CONNECT_OK) return fail("write", rc);
    if ((rc = read_exact(conn, back, CHUNK)) != CONNECT_OK) return fail("read", rc);
    done += CHUNK;
  }
  double mib_s = (double)done / (now() - start) / (1 << 20);
  connect_conn_shutdown(conn);
  connect_conn_free(conn);
  printf("c handshakes/s %.0f MiB/s %.0f\n", hs, mib_s);
  connect_service_free(service);
  connect_agent_free(agent);
  return 0;
}
