/* echo_client: sends one message to a Connect-native echo service and prints the answer.
 *
 * Its identity comes from the local agent (CONSUL_HTTP_ADDR, default 127.0.0.1:8500). The
 * server checks the intentions during the handshake; a denied client sees its read fail with
 * CONNECT_RESULT_TLS ("remote error: tls: access denied").
 *
 *   echo_client [-service NAME] [-target NAME] ADDR MESSAGE
 *
 *   -service NAME   this client's service name (default web)
 *   -target NAME    the service expected at ADDR (default echo)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <connect.h>

static int fail(const char *what, connect_result rc) {
  char detail[512];
  size_t n = 0;
  if (connect_last_error_message(detail, sizeof detail, &n) != CONNECT_OK) detail[0] = 0;
  fprintf(stderr, "echo_client: %s: %s: %s\n", what, connect_result_name(rc), detail);
  return 1;
}

int main(int argc, char **argv) {
  const char *name = "web", *target = "echo";
  int i = 1;
  for (; i + 1 < argc && argv[i][0] == '-'; i += 2) {
    if (strcmp(argv[i], "-service") == 0) name = argv[i + 1];
    else if (strcmp(argv[i], "-target") == 0) target = argv[i + 1];
    else break;
  }
  if (argc - i != 2) {
    fprintf(stderr, "usage: echo_client [-service NAME] [-target NAME] ADDR MESSAGE\n");
    return 2;
  }
  const char *addr = argv[i], *message = argv[i + 1];

  connect_agent_config_builder *builder = connect_agent_config_builder_new_with_env();
  const connect_agent *agent = NULL;
  connect_result rc = connect_agent_config_builder_build(builder, &agent);
  connect_agent_config_builder_free(builder);
  if (rc != CONNECT_OK) return fail("starting the agent", rc);

  const connect_service *service = NULL;
  connect_conn *conn = NULL;
  int status = 0;
  if ((rc = connect_service_new(agent, name, &service)) != CONNECT_OK) {
    status = fail("service", rc);
  } else if ((rc = connect_service_ready_wait(service, 30000)) != CONNECT_OK) {
    status = fail("waiting for a certificate", rc);
  } else if ((rc = connect_conn_dial_addr(service, addr, target, 10000, &conn)) != CONNECT_OK) {
    status = fail("dial", rc);
  } else {
    size_t sent = 0;
    connect_conn_set_timeout(conn, 10000);
    rc = connect_conn_write(conn, (const uint8_t *)message, strlen(message), &sent);
    if (rc == CONNECT_OK) rc = connect_conn_shutdown(conn);
    /* Read the echo until the server closes. */
    while (rc == CONNECT_OK) {
      uint8_t buf[4096];
      size_t got = 0;
      rc = connect_conn_read(conn, buf, sizeof buf, &got);
      if (rc != CONNECT_OK || got == 0) break;
      fwrite(buf, 1, got, stdout);
    }
    if (rc != CONNECT_OK) {
      status = fail("echo", rc);
    } else {
      connect_str peer = connect_conn_get_peer_id(conn);
      printf("\n(from %.*s)\n", (int)peer.len, peer.data);
    }
  }
  connect_conn_free(conn);
  connect_service_free(service);
  connect_agent_free(agent);
  return status;
}
