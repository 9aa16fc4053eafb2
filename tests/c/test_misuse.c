/* Every misuse a C caller can make of libconnect, each with its documented code, and the
   whole lifecycle of every handle. Runs under ASan+UBSan and under valgrind. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "check.h"

static void test_version_and_codes(void) {
  char want[64];
  snprintf(want, sizeof want, "libconnect/%d.%d.%d", CONNECT_VERSION_MAJOR, CONNECT_VERSION_MINOR,
           CONNECT_VERSION_PATCH);
  CHECK(strcmp(connect_version(), want) == 0);
  CHECK(CONNECT_VERSION_NUMBER ==
        CONNECT_VERSION_MAJOR * 1000000 + CONNECT_VERSION_MINOR * 1000 + CONNECT_VERSION_PATCH);
  CHECK(CONNECT_OK == 0 && CONNECT_RESULT_OK == 0);
  CHECK(strcmp(connect_result_name(CONNECT_RESULT_INVALID_SPIFFE_ID), "INVALID_SPIFFE_ID") == 0);
  CHECK(strcmp(connect_result_name(CONNECT_OK), "OK") == 0);
  CHECK(strcmp(connect_result_str(CONNECT_RESULT_WOULD_BLOCK), "operation would block") == 0);
  /* Unknown values read as INVALID_PARAMETER. */
  CHECK(strcmp(connect_result_name(9999), "INVALID_PARAMETER") == 0);
  CHECK(strcmp(connect_result_str(42), connect_result_str(CONNECT_RESULT_INVALID_PARAMETER)) == 0);
}

static void test_last_error(void) {
  size_t n = 0;
  /* A failing call leaves its detail for this thread. */
  CHECK_RC(connect_agent_config_builder_set_token(NULL, "x"), CONNECT_RESULT_NULL_PARAMETER);
  CHECK_RC(connect_last_error_message(NULL, 0, &n), CONNECT_RESULT_INSUFFICIENT_SIZE);
  CHECK(n == strlen("connect_agent_config_builder is NULL") + 1);
  char small[4] = {'x', 'x', 'x', 'x'};
  CHECK_RC(connect_last_error_message(small, sizeof small, &n), CONNECT_RESULT_INSUFFICIENT_SIZE);
  CHECK(small[0] == 'x'); /* untouched on failure */
  char buf[128];
  CHECK_RC(connect_last_error_message(buf, sizeof buf, &n), CONNECT_OK);
  CHECK(strcmp(buf, "connect_agent_config_builder is NULL") == 0);
  CHECK(n == strlen(buf));
  CHECK_RC(connect_last_error_message(buf, sizeof buf, NULL), CONNECT_RESULT_NULL_PARAMETER);
  CHECK_RC(connect_last_error_message(NULL, 5, &n), CONNECT_RESULT_NULL_PARAMETER);
}

static void test_builder_misuse(void) {
  const connect_agent *agent = (const connect_agent *)(uintptr_t)0x1; /* must stay untouched */
  connect_agent_config_builder *b = connect_agent_config_builder_new();
  CHECK(b != NULL);
  CHECK_RC(connect_agent_config_builder_set_token(b, NULL), CONNECT_RESULT_NULL_PARAMETER);
  CHECK_RC(connect_agent_config_builder_set_datacenter(b, ""), CONNECT_RESULT_INVALID_PARAMETER);
  CHECK_RC(connect_agent_config_builder_set_http_address(b, "  "), CONNECT_RESULT_INVALID_PARAMETER);
  CHECK_RC(connect_agent_config_builder_set_ca_file(b, ""), CONNECT_RESULT_INVALID_PARAMETER);
  const char bad_utf8[] = {'d', 'c', (char)0xff, 0};
  CHECK_RC(connect_agent_config_builder_set_datacenter(b, bad_utf8), CONNECT_RESULT_INVALID_PARAMETER);
  CHECK_RC(connect_agent_config_builder_build(b, NULL), CONNECT_RESULT_NULL_PARAMETER);
  CHECK_RC(connect_agent_config_builder_build(NULL, &agent), CONNECT_RESULT_NULL_PARAMETER);
  CHECK(agent == (const connect_agent *)(uintptr_t)0x1);
  /* A dev agent with HTTPS options is inconsistent: the build fails and spends the builder. */
  CHECK_RC(connect_agent_config_builder_set_https(b, true), CONNECT_OK);
  CHECK_RC(connect_agent_config_builder_build(b, &agent), CONNECT_RESULT_INVALID_PARAMETER);
  CHECK(agent == (const connect_agent *)(uintptr_t)0x1);
  CHECK_RC(connect_agent_config_builder_build(b, &agent), CONNECT_RESULT_ALREADY_USED);
  CHECK_RC(connect_agent_config_builder_set_token(b, "t"), CONNECT_RESULT_ALREADY_USED);
  connect_agent_config_builder_free(b);
  connect_agent_config_builder_free(NULL);

  /* An HTTP agent nobody answers for fails to build with an I/O-band code. */
  b = connect_agent_config_builder_new();
  CHECK_RC(connect_agent_config_builder_set_http_address(b, "127.0.0.1:1"), CONNECT_OK);
  connect_result rc = connect_agent_config_builder_build(b, &agent);
  CHECK(rc == CONNECT_RESULT_CONNECTION_REFUSED || rc == CONNECT_RESULT_HTTP || rc == CONNECT_RESULT_IO);
  connect_agent_config_builder_free(b);
}

static void test_agent_and_service(void) {
  connect_agent_config_builder *b = connect_agent_config_builder_new();
  const connect_agent *agent = NULL;
  REQUIRE_OK(connect_agent_config_builder_set_root_change_jitter_ms(b, 0));
  REQUIRE_OK(connect_agent_config_builder_build(b, &agent));
  /* Double build: refused even after success. */
  const connect_agent *again = NULL;
  CHECK_RC(connect_agent_config_builder_build(b, &again), CONNECT_RESULT_ALREADY_USED);
  CHECK(again == NULL);
  connect_agent_config_builder_free(b);

  char dc[8];
  size_t n = 0;
  CHECK_RC(connect_agent_get_datacenter(agent, dc, 2, &n), CONNECT_RESULT_INSUFFICIENT_SIZE);
  CHECK(n == 4);
  CHECK_RC(connect_agent_get_datacenter(agent, dc, n, &n), CONNECT_OK);
  CHECK(strcmp(dc, "dc1") == 0 && n == 3);
  CHECK_RC(connect_agent_get_datacenter(NULL, dc, sizeof dc, &n), CONNECT_RESULT_NULL_PARAMETER);

  /* Intentions: NULLs, bad actions, bad names. */
  CHECK_RC(connect_agent_intention_upsert(NULL, "a", "b", CONNECT_INTENTION_ACTION_ALLOW),
           CONNECT_RESULT_NULL_PARAMETER);
  CHECK_RC(connect_agent_intention_upsert(agent, NULL, "b", CONNECT_INTENTION_ACTION_ALLOW),
           CONNECT_RESULT_NULL_PARAMETER);
  CHECK_RC(connect_agent_intention_upsert(agent, "a", NULL, CONNECT_INTENTION_ACTION_ALLOW),
           CONNECT_RESULT_NULL_PARAMETER);
  CHECK_RC(connect_agent_intention_upsert(agent, "a", "b", 7), CONNECT_RESULT_INVALID_PARAMETER);
  CHECK_RC(connect_agent_intention_upsert(agent, "", "b", CONNECT_INTENTION_ACTION_ALLOW),
           CONNECT_RESULT_INVALID_PARAMETER);
  CHECK(strstr(last_error(), "Invalid source") != NULL);
  CHECK_RC(connect_agent_intention_upsert(agent, "web", "db", CONNECT_INTENTION_ACTION_DENY), CONNECT_OK);
  bool allowed = true;
  CHECK_RC(connect_agent_intention_check(agent, "web", "db", NULL), CONNECT_RESULT_NULL_PARAMETER);
  CHECK_RC(connect_agent_intention_check(agent, "web", "db", &allowed), CONNECT_OK);
  CHECK(!allowed);
  CHECK_RC(connect_agent_intention_delete(agent, "web", "db"), CONNECT_OK);
  CHECK_RC(connect_agent_intention_delete(agent, "web", "db"), CONNECT_RESULT_NOT_FOUND); /* as documented */
  CHECK_RC(connect_agent_intention_check(agent, "web", "db", &allowed), CONNECT_OK);
  CHECK(allowed); /* dev default: allow */

  /* CA configuration. */
  CHECK_RC(connect_agent_set_ca_config(agent, "{not json"), CONNECT_RESULT_INVALID_CA_CONFIG);
  CHECK_RC(connect_agent_set_ca_config(agent, NULL), CONNECT_RESULT_NULL_PARAMETER);
  size_t roots_n = 0;
  CHECK_RC(connect_agent_get_roots_pem(agent, NULL, 0, &roots_n), CONNECT_RESULT_INSUFFICIENT_SIZE);
  CHECK(roots_n > 100);
  CHECK_RC(connect_agent_get_roots_pem(agent, NULL, 0, NULL), CONNECT_RESULT_NULL_PARAMETER);

  /* Registration (dev agents). */
  CHECK_RC(connect_agent_register_service(agent, "db", "127.0.0.1", 0), CONNECT_RESULT_INVALID_PARAMETER);
  CHECK_RC(connect_agent_register_service(agent, "db", NULL, 80), CONNECT_RESULT_NULL_PARAMETER);

  /* Services: NULLs and invalid names. */
  const connect_service *svc = NULL;
  CHECK_RC(connect_service_new(NULL, "web", &svc), CONNECT_RESULT_NULL_PARAMETER);
  CHECK_RC(connect_service_new(agent, NULL, &svc), CONNECT_RESULT_NULL_PARAMETER);
  CHECK_RC(connect_service_new(agent, "web", NULL), CONNECT_RESULT_NULL_PARAMETER);
  CHECK_RC(connect_service_new(agent, "", &svc), CONNECT_RESULT_INVALID_PARAMETER);
  /* One name rule in every language: the characters of a SPIFFE path segment. */
  CHECK_RC(connect_service_new(agent, "a/b", &svc), CONNECT_RESULT_INVALID_PARAMETER);
  CHECK_RC(connect_service_new(agent, "..", &svc), CONNECT_RESULT_INVALID_PARAMETER);
  CHECK_RC(connect_service_new(agent, "web\n", &svc), CONNECT_RESULT_INVALID_PARAMETER);
  CHECK_RC(connect_agent_register_service(agent, "a/b", "127.0.0.1", 80), CONNECT_RESULT_INVALID_PARAMETER);
  const char bad_utf8[] = {'w', (char)0xc3, 0};
  CHECK_RC(connect_service_new(agent, bad_utf8, &svc), CONNECT_RESULT_INVALID_PARAMETER);
  CHECK(svc == NULL);
  REQUIRE_OK(connect_service_new(agent, "web", &svc));
  REQUIRE_OK(connect_service_ready_wait(svc, 20000));
  CHECK(connect_service_is_ready(svc));
  CHECK(!connect_service_is_ready(NULL));
  CHECK(connect_service_get_generation(svc) >= 1);
  CHECK(connect_service_get_generation(NULL) == 0);
  CHECK_RC(connect_service_ready_wait(NULL, 10), CONNECT_RESULT_NULL_PARAMETER);

  /* Material with the size-query pattern. */
  size_t need = 0;
  CHECK_RC(connect_service_get_chain_pem(svc, NULL, 0, &need), CONNECT_RESULT_INSUFFICIENT_SIZE);
  CHECK(need > 100);
  uint8_t tiny[16];
  memset(tiny, 0xaa, sizeof tiny);
  size_t got = 12345;
  CHECK_RC(connect_service_get_chain_pem(svc, tiny, sizeof tiny, &got), CONNECT_RESULT_INSUFFICIENT_SIZE);
  CHECK(got == need);
  CHECK(tiny[0] == 0xaa);
  uint8_t *chain = malloc(need);
  CHECK_RC(connect_service_get_chain_pem(svc, chain, need, &got), CONNECT_OK);
  CHECK(got == need && memcmp(chain, "-----BEGIN CERTIFICATE-----", 27) == 0);
  CHECK_RC(connect_service_get_chain_pem(svc, NULL, 10, &got), CONNECT_RESULT_NULL_PARAMETER);
  CHECK_RC(connect_service_get_key_pem(svc, NULL, 0, &need), CONNECT_RESULT_INSUFFICIENT_SIZE);
  CHECK_RC(connect_service_get_roots_pem(svc, NULL, 0, &need), CONNECT_RESULT_INSUFFICIENT_SIZE);
  CHECK(need == roots_n);
  CHECK_RC(connect_service_get_key_pem(NULL, NULL, 0, &need), CONNECT_RESULT_NULL_PARAMETER);
  char id[256];
  CHECK_RC(connect_service_get_spiffe_id(svc, id, 8, &need), CONNECT_RESULT_INSUFFICIENT_SIZE);
  CHECK_RC(connect_service_get_spiffe_id(svc, id, sizeof id, &need), CONNECT_OK);
  CHECK(strncmp(id, "spiffe://", 9) == 0 && strstr(id, "/ns/default/dc/dc1/svc/web") != NULL);

  /* Authorization: explained decisions, bad URIs, bad PEM, bad DER. */
  connect_authorization *authz = NULL;
  CHECK_RC(connect_service_authorize_uri(svc, "not a uri", &authz), CONNECT_RESULT_INVALID_SPIFFE_ID);
  CHECK_RC(connect_service_authorize_uri(svc, NULL, &authz), CONNECT_RESULT_NULL_PARAMETER);
  CHECK_RC(connect_service_authorize_uri(svc, id, NULL), CONNECT_RESULT_NULL_PARAMETER);
  CHECK(authz == NULL);
  const char pem[] = "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n";
  CHECK_RC(connect_service_authorize_chain_pem(svc, (const uint8_t *)pem, strlen(pem), &authz),
           CONNECT_RESULT_INVALID_CERTIFICATE);
  CHECK_RC(connect_service_authorize_chain_pem(svc, (const uint8_t *)"", 0, &authz),
           CONNECT_RESULT_INVALID_CERTIFICATE);
  const uint8_t der[] = {0x30, 0x03, 0x02, 0x01, 0x00};
  CHECK_RC(connect_service_authorize_der(svc, der, sizeof der, &authz), CONNECT_RESULT_INVALID_CERTIFICATE);
  CHECK_RC(connect_service_authorize_der(svc, NULL, 0, &authz), CONNECT_RESULT_NULL_PARAMETER);
  CHECK(authz == NULL);
  /* Our own chain verifies and is allowed (dev default). */
  CHECK_RC(connect_service_authorize_chain_pem(svc, chain, got, &authz), CONNECT_OK);
  CHECK(connect_authorization_is_allowed(authz));
  connect_str peer = connect_authorization_get_peer(authz);
  CHECK_STR_EQ(peer.data, peer.len, id);
  connect_str reason = connect_authorization_get_reason(authz);
  CHECK(reason.len > 0);
  connect_authorization_free(authz);
  CHECK(!connect_authorization_is_allowed(NULL));
  CHECK(connect_authorization_get_reason(NULL).len == 0);
  connect_authorization_free(NULL);
  free(chain);

  /* Listener and connection misuse. */
  connect_listener *l = NULL;
  CHECK_RC(connect_listener_new(svc, "not an address", &l), CONNECT_RESULT_IO);
  CHECK_RC(connect_listener_new(NULL, "127.0.0.1:0", &l), CONNECT_RESULT_NULL_PARAMETER);
  CHECK_RC(connect_listener_new(svc, "127.0.0.1:0", NULL), CONNECT_RESULT_NULL_PARAMETER);
  REQUIRE_OK(connect_listener_new(svc, "127.0.0.1:0", &l));
  CHECK(connect_listener_get_port(l) != 0);
  CHECK(connect_listener_get_port(NULL) == 0);
  char addr[64];
  CHECK_RC(connect_listener_get_local_addr(l, addr, 3, &n), CONNECT_RESULT_INSUFFICIENT_SIZE);
  CHECK_RC(connect_listener_get_local_addr(l, addr, sizeof addr, &n), CONNECT_OK);
  CHECK(strncmp(addr, "127.0.0.1:", 10) == 0);
  connect_conn *conn = NULL;
  CHECK_RC(connect_listener_accept(l, 0, &conn), CONNECT_RESULT_TIMEOUT);
  CHECK_RC(connect_listener_accept(l, 50, &conn), CONNECT_RESULT_TIMEOUT);
  CHECK_RC(connect_listener_accept(NULL, 50, &conn), CONNECT_RESULT_NULL_PARAMETER);
  CHECK_RC(connect_listener_accept(l, 50, NULL), CONNECT_RESULT_NULL_PARAMETER);
  CHECK(conn == NULL);
  CHECK_RC(connect_conn_dial_addr(svc, "127.0.0.1:1", "db", 5000, &conn), CONNECT_RESULT_CONNECTION_REFUSED);
  CHECK_RC(connect_conn_dial(svc, "nothing-registered", 5000, &conn), CONNECT_RESULT_CONNECTION_REFUSED);
  CHECK_RC(connect_conn_dial(svc, NULL, 5000, &conn), CONNECT_RESULT_NULL_PARAMETER);
  CHECK(conn == NULL);
  uint8_t b1[4];
  CHECK_RC(connect_conn_read(NULL, b1, sizeof b1, &n), CONNECT_RESULT_NULL_PARAMETER);
  CHECK_RC(connect_conn_write(NULL, b1, sizeof b1, &n), CONNECT_RESULT_NULL_PARAMETER);
  CHECK_RC(connect_conn_flush(NULL), CONNECT_RESULT_NULL_PARAMETER);
  CHECK_RC(connect_conn_shutdown(NULL), CONNECT_RESULT_NULL_PARAMETER);
  CHECK_RC(connect_conn_set_nonblocking(NULL, true), CONNECT_RESULT_NULL_PARAMETER);
  CHECK_RC(connect_conn_set_timeout(NULL, 10), CONNECT_RESULT_NULL_PARAMETER);
  CHECK(connect_conn_get_fd(NULL) == -1);
  CHECK(connect_conn_get_peer_id(NULL).len == 0);
  CHECK(!connect_conn_is_write_pending(NULL));
  connect_conn_free(NULL);

  /* Callbacks: NULL service; NULL callback clears. */
  CHECK_RC(connect_service_set_change_callback(NULL, NULL, NULL, NULL), CONNECT_RESULT_NULL_PARAMETER);
  CHECK_RC(connect_service_set_change_callback(svc, NULL, NULL, NULL), CONNECT_OK);

  /* A closed agent: everything that needs it says CLOSED; getters still answer. */
  connect_agent_free(agent);
  CHECK_RC(connect_listener_accept(l, 10, &conn), CONNECT_RESULT_CLOSED);
  CHECK_RC(connect_conn_dial_addr(svc, "127.0.0.1:1", "db", 1000, &conn), CONNECT_RESULT_CLOSED);
  CHECK_RC(connect_service_ready_wait(svc, 10), CONNECT_RESULT_CLOSED);
  CHECK(connect_service_is_ready(svc));
  CHECK_RC(connect_service_get_spiffe_id(svc, id, sizeof id, &need), CONNECT_OK);
  connect_listener_free(l);
  connect_service_free(svc);
  connect_listener_free(NULL);
  connect_service_free(NULL);
  connect_agent_free(NULL);
}

int main(void) {
  test_version_and_codes();
  test_last_error();
  test_builder_misuse();
  test_agent_and_service();
  return check_done("test_misuse");
}
