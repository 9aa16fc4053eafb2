/* The statements connect.h makes about behaviour, one check each: deleting a missing intention,
   a client reconnecting with a resumed session after its intention turned to deny, the
   service-name rule of registration, what both ends read when a listener revokes a live
   connection, the registration connect_listener_new makes, size queries and the NUL, a NULL
   buffer with a length, accept with timeout 0, and the dev agent's default intention policy.
   Runs under ASan+UBSan and under valgrind. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "check.h"

#define T_MS 20000 /* generous: valgrind is slow */

static const connect_agent *agent;

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

static const connect_service *ready_service(const char *name) {
  const connect_service *s = NULL;
  REQUIRE_OK(connect_service_new(agent, name, &s));
  REQUIRE_OK(connect_service_ready_wait(s, T_MS));
  return s;
}

/* The listener's end of a connection a client just dialled (its handshake may still be
   finishing in the background). */
static connect_conn *accept_one(connect_listener *l) {
  connect_conn *c = NULL;
  connect_result rc = connect_listener_accept(l, T_MS, &c);
  if (rc != CONNECT_OK) {
    fprintf(stderr, "accept: %s: %s\n", connect_result_name(rc), last_error());
    check_failures++;
    return NULL;
  }
  return c;
}

/* Sends `msg` from `from` and checks that `to` reads it. */
static void send_recv(connect_conn *from, connect_conn *to, const char *msg) {
  size_t len = strlen(msg), n = 0, got = 0;
  char buf[64];
  CHECK_RC(connect_conn_write(from, (const uint8_t *)msg, len, &n), CONNECT_OK);
  while (got < len) {
    n = 0;
    connect_result rc = connect_conn_read(to, (uint8_t *)buf + got, sizeof buf - got, &n);
    if (rc != CONNECT_OK || n == 0) {
      CHECK_RC(rc, CONNECT_OK);
      return;
    }
    got += n;
  }
  CHECK(got == len && memcmp(buf, msg, len) == 0);
}

/* Both ends close with close_notify and read the other's: a clean end of stream. */
static void close_pair(connect_conn *client, connect_conn *server) {
  uint8_t b[8];
  size_t n = 1;
  CHECK_RC(connect_conn_shutdown(client), CONNECT_OK);
  CHECK_RC(connect_conn_read(server, b, sizeof b, &n), CONNECT_OK);
  CHECK(n == 0);
  CHECK_RC(connect_conn_shutdown(server), CONNECT_OK);
  n = 1;
  CHECK_RC(connect_conn_read(client, b, sizeof b, &n), CONNECT_OK);
  CHECK(n == 0);
  connect_conn_free(client);
  connect_conn_free(server);
}

/* connect_agent_intention_delete: CONNECT_RESULT_NOT_FOUND for a pair without an intention. */
static void test_intention_delete(void) {
  CHECK_RC(connect_agent_intention_delete(agent, "never", "there"), CONNECT_RESULT_NOT_FOUND);
  CHECK(strstr(last_error(), "never => there") != NULL);
  REQUIRE_OK(connect_agent_intention_upsert(agent, "never", "there", CONNECT_INTENTION_ACTION_DENY));
  CHECK_RC(connect_agent_intention_delete(agent, "never", "there"), CONNECT_OK);
  CHECK_RC(connect_agent_intention_delete(agent, "never", "there"), CONNECT_RESULT_NOT_FOUND);
  CHECK_RC(connect_agent_intention_delete(agent, "a/b", "there"), CONNECT_RESULT_INVALID_PARAMETER);
  CHECK_RC(connect_agent_intention_delete(agent, "never", NULL), CONNECT_RESULT_NULL_PARAMETER);
}

/* connect_agent_register_service and connect_service_new: one name rule, 1 to 256 of
   A-Z a-z 0-9 . _ -, not . or .. */
static void test_service_names(void) {
  static const char *bad[] = {"", ".", "..", "*", "a/b", "a b", "web\n", "we:b", "w%2Fb",
                              "caf\xc3\xa9", "web?x", "a\\b"};
  char longest[258];
  memset(longest, 'n', 257);
  longest[257] = 0;
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    const connect_service *s = NULL;
    connect_result rc = connect_agent_register_service(agent, bad[i], "127.0.0.1", 8080);
    if (rc != CONNECT_RESULT_INVALID_PARAMETER) {
      fprintf(stderr, "register_service(\"%s\") returned %s\n", bad[i], connect_result_name(rc));
      check_failures++;
    }
    rc = connect_service_new(agent, bad[i], &s);
    if (rc != CONNECT_RESULT_INVALID_PARAMETER) {
      fprintf(stderr, "service_new(\"%s\") returned %s\n", bad[i], connect_result_name(rc));
      check_failures++;
      connect_service_free(s);
    }
  }
  CHECK_RC(connect_agent_register_service(agent, longest, "127.0.0.1", 8080),
           CONNECT_RESULT_INVALID_PARAMETER);
  longest[256] = 0; /* 256 characters: the longest name allowed */
  CHECK_RC(connect_agent_register_service(agent, longest, "127.0.0.1", 8080), CONNECT_OK);
  CHECK_RC(connect_agent_register_service(agent, "Web_1.v-2", "127.0.0.1", 8080), CONNECT_OK);
}

/* The dev agent allows by default, connect_listener_new registers the instance so that a dial
   by name finds it, and releasing the service deregisters it. */
static void test_default_allow_and_registration(void) {
  bool allowed = false;
  CHECK_RC(connect_agent_intention_check(agent, "alpha", "beta", &allowed), CONNECT_OK);
  CHECK(allowed);
  const connect_service *alpha = ready_service("alpha");
  const connect_service *beta = ready_service("beta");
  connect_conn *c = NULL;
  CHECK_RC(connect_conn_dial(alpha, "beta", T_MS, &c), CONNECT_RESULT_CONNECTION_REFUSED);
  connect_listener *l = NULL;
  REQUIRE_OK(connect_listener_new(beta, "127.0.0.1:0", &l));
  /* No connect_agent_register_service: the listener registered beta. (The failed dial above
     left an empty answer in the agent's cache; its blocking query brings the new instance.) */
  connect_result rc = CONNECT_RESULT_CONNECTION_REFUSED;
  for (long end = now_ms() + T_MS; rc == CONNECT_RESULT_CONNECTION_REFUSED && now_ms() < end;) {
    rc = connect_conn_dial(alpha, "beta", T_MS, &c);
    if (rc == CONNECT_RESULT_CONNECTION_REFUSED) sleep_ms(20);
  }
  REQUIRE_OK(rc);
  connect_conn *s = accept_one(l);
  if (s) {
    send_recv(c, s, "no intention needed");
    close_pair(c, s);
  } else {
    connect_conn_free(c);
  }
  connect_listener_free(l);
  connect_service_free(beta);
  /* Deregistered: the catalog has no instance left (the agent's cache learns it through its
     blocking query, so wait for it). */
  int gone = 0;
  for (long end = now_ms() + T_MS; !gone && now_ms() < end;) {
    c = NULL;
    rc = connect_conn_dial(alpha, "beta", T_MS, &c);
    CHECK(rc != CONNECT_OK);
    if (rc == CONNECT_OK) connect_conn_free(c);
    gone = rc == CONNECT_RESULT_CONNECTION_REFUSED && strstr(last_error(), "no healthy instances");
    if (!gone) sleep_ms(50);
  }
  CHECK(gone);
  connect_service_free(alpha);
}

/* accept with timeout 0: CONNECT_RESULT_TIMEOUT at once when nothing waits, else the waiting
   connection. Revocation: after the intention turns to deny, both ends of a live connection
   read CONNECT_RESULT_TLS. A reconnecting client whose session would resume is refused with the
   access_denied alert, the same CONNECT_RESULT_TLS a new client gets. */
static void test_accept_revocation_and_resumption(void) {
  const connect_service *gamma = ready_service("gamma");
  const connect_service *delta = ready_service("delta");
  connect_listener *l = NULL;
  REQUIRE_OK(connect_listener_new(gamma, "127.0.0.1:0", &l));
  char addr[64];
  size_t n = 0;
  REQUIRE_OK(connect_listener_get_local_addr(l, addr, sizeof addr, &n));

  connect_conn *s = NULL;
  long t0 = now_ms();
  CHECK_RC(connect_listener_accept(l, 0, &s), CONNECT_RESULT_TIMEOUT);
  CHECK(now_ms() - t0 < 3000); /* at once, not after some default wait */
  CHECK(s == NULL);

  /* A live connection; the client reads the server's data, and with it its session tickets. */
  connect_conn *live = NULL;
  REQUIRE_OK(connect_conn_dial_addr(delta, addr, "gamma", T_MS, &live));
  connect_conn *live_s = NULL;
  for (long end = now_ms() + T_MS; now_ms() < end;) {
    connect_result rc = connect_listener_accept(l, 0, &live_s);
    if (rc == CONNECT_OK) break;
    CHECK_RC(rc, CONNECT_RESULT_TIMEOUT);
    sleep_ms(20);
  }
  CHECK(live_s != NULL);
  if (!live_s) return;
  send_recv(live_s, live, "tickets");
  send_recv(live, live_s, "up");
  CHECK(!connect_conn_is_resumed(live));

  /* Reconnecting from the same service resumes the session while the intentions allow it. */
  connect_conn *again = NULL;
  REQUIRE_OK(connect_conn_dial_addr(delta, addr, "gamma", T_MS, &again));
  connect_conn *again_s = accept_one(l);
  CHECK(connect_conn_is_resumed(again));
  if (again_s) {
    send_recv(again, again_s, "resumed");
    close_pair(again, again_s);
  } else {
    connect_conn_free(again);
  }

  REQUIRE_OK(connect_agent_intention_upsert(agent, "delta", "gamma", CONNECT_INTENTION_ACTION_DENY));

  /* Revoked: the listener shuts the live connection down without close_notify. */
  uint8_t b[16];
  CHECK_RC(connect_conn_set_timeout(live, T_MS), CONNECT_OK);
  CHECK_RC(connect_conn_set_timeout(live_s, T_MS), CONNECT_OK);
  n = 99;
  CHECK_RC(connect_conn_read(live, b, sizeof b, &n), CONNECT_RESULT_TLS);
  CHECK(strstr(last_error(), "without close_notify") != NULL);
  CHECK(n == 99);
  CHECK_RC(connect_conn_read(live_s, b, sizeof b, &n), CONNECT_RESULT_TLS);
  CHECK(strstr(last_error(), "without close_notify") != NULL);
  connect_conn_free(live);
  connect_conn_free(live_s);

  /* Reconnecting after the deny: no resumption, a full handshake, the access_denied alert. */
  connect_conn *denied = NULL;
  connect_result rc = connect_conn_dial_addr(delta, addr, "gamma", T_MS, &denied);
  if (rc == CONNECT_OK) {
    CHECK(!connect_conn_is_resumed(denied));
    CHECK_RC(connect_conn_set_timeout(denied, T_MS), CONNECT_OK);
    n = 99;
    rc = connect_conn_read(denied, b, sizeof b, &n);
    CHECK(n == 99);
    connect_conn_free(denied);
  }
  CHECK_RC(rc, CONNECT_RESULT_TLS);
  CHECK(strstr(last_error(), "access denied") != NULL);
  /* The server's application never saw it. */
  CHECK_RC(connect_listener_accept(l, 200, &s), CONNECT_RESULT_TIMEOUT);

  CHECK_RC(connect_agent_intention_delete(agent, "delta", "gamma"), CONNECT_OK);
  connect_listener_free(l);
  connect_service_free(delta);
  connect_service_free(gamma);
}

/* The size-query pattern: text counts its NUL in the size needed, not in the length written;
   bytes have no NUL; a NULL buffer with a length is refused and nothing is written. */
static void test_sizes(void) {
  size_t n = 0;
  CHECK_RC(connect_agent_get_datacenter(agent, NULL, 0, &n), CONNECT_RESULT_INSUFFICIENT_SIZE);
  CHECK(n == strlen("dc1") + 1);
  char dc[4] = {'x', 'x', 'x', 'x'};
  CHECK_RC(connect_agent_get_datacenter(agent, dc, 3, &n), CONNECT_RESULT_INSUFFICIENT_SIZE);
  CHECK(n == 4 && dc[0] == 'x');
  CHECK_RC(connect_agent_get_datacenter(agent, dc, 4, &n), CONNECT_OK);
  CHECK(n == 3 && memcmp(dc, "dc1", 4) == 0);

  size_t need = 0, got = 0;
  CHECK_RC(connect_agent_get_roots_pem(agent, NULL, 0, &need), CONNECT_RESULT_INSUFFICIENT_SIZE);
  uint8_t *pem = malloc(need);
  CHECK_RC(connect_agent_get_roots_pem(agent, pem, need, &got), CONNECT_OK);
  CHECK(got == need && pem[need - 1] == '\n'); /* all of it PEM text, no NUL */
  free(pem);

  n = 777;
  char buf[8];
  CHECK_RC(connect_agent_get_datacenter(agent, NULL, 8, &n), CONNECT_RESULT_NULL_PARAMETER);
  CHECK_RC(connect_agent_get_roots_pem(agent, NULL, 8, &n), CONNECT_RESULT_NULL_PARAMETER);
  CHECK_RC(connect_last_error_message(NULL, 8, &n), CONNECT_RESULT_NULL_PARAMETER);
  CHECK(n == 777);
  CHECK_RC(connect_agent_get_datacenter(agent, buf, sizeof buf, NULL), CONNECT_RESULT_NULL_PARAMETER);
}

int main(void) {
  connect_agent_config_builder *b = connect_agent_config_builder_new();
  REQUIRE_OK(connect_agent_config_builder_set_root_change_jitter_ms(b, 0));
  REQUIRE_OK(connect_agent_config_builder_build(b, &agent));
  connect_agent_config_builder_free(b);

  test_intention_delete();
  test_service_names();
  test_default_allow_and_registration();
  test_accept_revocation_and_resumption();
  test_sizes();

  connect_agent_free(agent);
  return check_done("test_contract");
}
