/* echo_server: a Connect-native echo service in C.
 *
 * It gets its identity from the local agent (`connect agent -dev`, or a Consul agent) found
 * through CONSUL_HTTP_ADDR (default 127.0.0.1:8500), listens with mutual TLS, and echoes what
 * each client sends. Only clients that the intentions allow get through the handshake.
 *
 *   echo_server [-listen ADDR] [-service NAME] [-allow CLIENT] [-count N]
 *
 *   -listen ADDR    where to listen (default 127.0.0.1:9191)
 *   -service NAME   this service's name (default echo)
 *   -allow CLIENT   set the intentions "* -> NAME deny" and "CLIENT -> NAME allow" first
 *   -count N        exit after serving N connections (default: serve forever)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <connect.h>

static void fail(const char *what, connect_result rc) {
  char detail[512];
  size_t n = 0;
  if (connect_last_error_message(detail, sizeof detail, &n) != CONNECT_OK) detail[0] = 0;
  fprintf(stderr, "echo_server: %s: %s: %s\n", what, connect_result_name(rc), detail);
  exit(1);
}

#define TRY(what, expr)                        \
  do {                                         \
    connect_result rc_ = (expr);               \
    if (rc_ != CONNECT_OK) fail((what), rc_);  \
  } while (0)

int main(int argc, char **argv) {
  const char *listen_addr = "127.0.0.1:9191", *name = "echo", *allow = NULL;
  long count = -1;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (strcmp(argv[i], "-listen") == 0) listen_addr = argv[i + 1];
    else if (strcmp(argv[i], "-service") == 0) name = argv[i + 1];
    else if (strcmp(argv[i], "-allow") == 0) allow = argv[i + 1];
    else if (strcmp(argv[i], "-count") == 0) count = strtol(argv[i + 1], NULL, 10);
    else {
      fprintf(stderr, "usage: echo_server [-listen ADDR] [-service NAME] [-allow CLIENT] [-count N]\n");
      return 2;
    }
  }

  connect_agent_config_builder *builder = connect_agent_config_builder_new_with_env();
  const connect_agent *agent = NULL;
  TRY("starting the agent", connect_agent_config_builder_build(builder, &agent));
  connect_agent_config_builder_free(builder);

  if (allow != NULL) {
    TRY("intention", connect_agent_intention_upsert(agent, "*", name, CONNECT_INTENTION_ACTION_DENY));
    TRY("intention", connect_agent_intention_upsert(agent, allow, name, CONNECT_INTENTION_ACTION_ALLOW));
  }

  const connect_service *service = NULL;
  TRY("service", connect_service_new(agent, name, &service));
  TRY("waiting for a certificate", connect_service_ready_wait(service, 30000));

  connect_listener *listener = NULL;
  TRY("listen", connect_listener_new(service, listen_addr, &listener));
  char addr[128];
  size_t n = 0;
  TRY("address", connect_listener_get_local_addr(listener, addr, sizeof addr, &n));
  printf("echo_server: %s listening on %s\n", name, addr);
  fflush(stdout);

  for (long served = 0; count < 0 || served < count; served++) {
    connect_conn *conn = NULL;
    TRY("accept", connect_listener_accept(listener, CONNECT_WAIT_FOREVER, &conn));
    connect_str peer = connect_conn_get_peer_id(conn);
    printf("echo_server: connection from %.*s\n", (int)peer.len, peer.data);
    fflush(stdout);
    uint8_t buf[4096];
    for (;;) {
      size_t got = 0, sent = 0;
      connect_result rc = connect_conn_read(conn, buf, sizeof buf, &got);
      if (rc != CONNECT_OK || got == 0) break;
      if (connect_conn_write(conn, buf, got, &sent) != CONNECT_OK) break;
    }
    connect_conn_shutdown(conn);
    connect_conn_free(conn);
  }

  connect_listener_free(listener);
  connect_service_free(service);
  connect_agent_free(agent);
  return 0;
}
