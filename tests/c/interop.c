/* Interop with another TLS stack (OpenSSL's s_client and s_server, driven by
   ffi/tests/c_programs.rs):

   interop server DIR   A libconnect server for "db" that only "web" may reach. Writes the
                        material of "web" and "api" (DIR/{web,api}-{chain,key}.pem) and the
                        roots (DIR/roots.pem) for s_client, prints "PORT n", accepts one
                        connection, answers the first line with "echo: <line>", prints
                        "PEER <spiffe id>" and exits.
   interop client DIR   A libconnect client "web". Writes the material of "db" for s_server,
                        prints "READY", reads a port on stdin, dials "db" there, sends "hello\n",
                        prints "GOT <reply>" and exits. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

static void write_file(const char *dir, const char *name, const uint8_t *data, size_t len) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "wb");
  if (!f || fwrite(data, 1, len, f) != len || fclose(f) != 0) {
    fprintf(stderr, "cannot write %s\n", path);
    exit(2);
  }
}

typedef connect_result (*getter)(const connect_service *, uint8_t *, size_t, size_t *);

static void dump(const connect_service *s, getter get, const char *dir, const char *name) {
  size_t need = 0, n = 0;
  if (get(s, NULL, 0, &need) != CONNECT_RESULT_INSUFFICIENT_SIZE) exit(2);
  uint8_t *buf = malloc(need);
  REQUIRE_OK(get(s, buf, need, &n));
  write_file(dir, name, buf, n);
  free(buf);
}

static void dump_identity(const connect_service *s, const char *dir, const char *prefix) {
  char name[64];
  snprintf(name, sizeof name, "%s-chain.pem", prefix);
  dump(s, connect_service_get_chain_pem, dir, name);
  snprintf(name, sizeof name, "%s-key.pem", prefix);
  dump(s, connect_service_get_key_pem, dir, name);
  dump(s, connect_service_get_roots_pem, dir, "roots.pem");
}

static const connect_agent *start_agent(void) {
  const connect_agent *agent = NULL;
  connect_agent_config_builder *b = connect_agent_config_builder_new();
  REQUIRE_OK(connect_agent_config_builder_build(b, &agent));
  connect_agent_config_builder_free(b);
  return agent;
}

static const connect_service *ready_service(const connect_agent *agent, const char *name) {
  const connect_service *s = NULL;
  REQUIRE_OK(connect_service_new(agent, name, &s));
  REQUIRE_OK(connect_service_ready_wait(s, 20000));
  return s;
}

static int run_server(const char *dir) {
  const connect_agent *agent = start_agent();
  REQUIRE_OK(connect_agent_intention_upsert(agent, "*", "db", CONNECT_INTENTION_ACTION_DENY));
  REQUIRE_OK(connect_agent_intention_upsert(agent, "web", "db", CONNECT_INTENTION_ACTION_ALLOW));
  const connect_service *db = ready_service(agent, "db");
  const connect_service *web = ready_service(agent, "web");
  const connect_service *api = ready_service(agent, "api");
  dump_identity(web, dir, "web");
  dump_identity(api, dir, "api");
  connect_listener *l = NULL;
  REQUIRE_OK(connect_listener_new(db, "127.0.0.1:0", &l));
  printf("PORT %u\n", (unsigned)connect_listener_get_port(l));
  fflush(stdout);
  connect_conn *c = NULL;
  REQUIRE_OK(connect_listener_accept(l, 30000, &c));
  REQUIRE_OK(connect_conn_set_timeout(c, 10000));
  char line[512];
  size_t got = 0;
  while (got < sizeof line - 1 && memchr(line, '\n', got) == NULL) {
    size_t n = 0;
    REQUIRE_OK(connect_conn_read(c, (uint8_t *)line + got, sizeof line - 1 - got, &n));
    if (n == 0) break;
    got += n;
  }
  char reply[600];
  int len = snprintf(reply, sizeof reply, "echo: %.*s", (int)got, line);
  size_t w = 0;
  REQUIRE_OK(connect_conn_write(c, (const uint8_t *)reply, (size_t)len, &w));
  connect_str peer = connect_conn_get_peer_id(c);
  printf("PEER %.*s\n", (int)peer.len, peer.data);
  fflush(stdout);
  connect_conn_shutdown(c);
  connect_conn_free(c);
  connect_listener_free(l);
  connect_service_free(api);
  connect_service_free(web);
  connect_service_free(db);
  connect_agent_free(agent);
  return 0;
}

static int run_client(const char *dir) {
  const connect_agent *agent = start_agent();
  const connect_service *db = ready_service(agent, "db");
  const connect_service *web = ready_service(agent, "web");
  dump_identity(db, dir, "db");
  printf("READY\n");
  fflush(stdout);
  unsigned port = 0;
  if (scanf("%u", &port) != 1) return 2;
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%u", port);
  connect_conn *c = NULL;
  REQUIRE_OK(connect_conn_dial_addr(web, addr, "db", 20000, &c));
  connect_str peer = connect_conn_get_peer_id(c);
  printf("PEER %.*s\n", (int)peer.len, peer.data);
  REQUIRE_OK(connect_conn_set_timeout(c, 10000));
  size_t w = 0;
  REQUIRE_OK(connect_conn_write(c, (const uint8_t *)"hello\n", 6, &w));
  char buf[256];
  size_t got = 0;
  while (got < sizeof buf - 1 && memchr(buf, '\n', got) == NULL) {
    size_t n = 0;
    if (connect_conn_read(c, (uint8_t *)buf + got, sizeof buf - 1 - got, &n) != CONNECT_OK || n == 0) break;
    got += n;
  }
  printf("GOT %.*s\n", (int)got, buf);
  fflush(stdout);
  connect_conn_free(c);
  connect_service_free(web);
  connect_service_free(db);
  connect_agent_free(agent);
  return got > 0 ? 0 : 1;
}

int main(int argc, char **argv) {
  if (argc == 3 && strcmp(argv[1], "server") == 0) return run_server(argv[2]);
  if (argc == 3 && strcmp(argv[1], "client") == 0) return run_client(argv[2]);
  fprintf(stderr, "usage: interop server|client DIR\n");
  return 2;
}
