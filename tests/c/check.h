/* Tiny assertion helpers shared by the C tests of libconnect. */
#ifndef CONNECT_TEST_CHECK_H
#define CONNECT_TEST_CHECK_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "connect.h"

static int check_failures = 0;

/* The detail of the latest failure on this thread, for messages. */
static inline const char *last_error(void) {
  static _Thread_local char buf[1024];
  size_t n = 0;
  if (connect_last_error_message(buf, sizeof buf, &n) != CONNECT_OK) {
    snprintf(buf, sizeof buf, "(detail too long)");
  }
  return buf;
}

#define CHECK(cond)                                                                 \
  do {                                                                              \
    if (!(cond)) {                                                                  \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);      \
      check_failures++;                                                             \
    }                                                                               \
  } while (0)

/* Checks that `expr` returns `want`; prints both names and the detail otherwise. */
#define CHECK_RC(expr, want)                                                        \
  do {                                                                              \
    connect_result rc_ = (expr);                                                    \
    if (rc_ != (connect_result)(want)) {                                            \
      fprintf(stderr, "%s:%d: %s returned %s (%u), want %s: %s\n", __FILE__,        \
              __LINE__, #expr, connect_result_name(rc_), (unsigned)rc_,             \
              connect_result_name(want), last_error());                             \
      check_failures++;                                                             \
    }                                                                               \
  } while (0)

/* Like CHECK_RC(expr, CONNECT_OK) but stops the program: later steps depend on it. */
#define REQUIRE_OK(expr)                                                            \
  do {                                                                              \
    connect_result rc_ = (expr);                                                    \
    if (rc_ != CONNECT_OK) {                                                        \
      fprintf(stderr, "%s:%d: %s returned %s: %s\n", __FILE__, __LINE__, #expr,     \
              connect_result_name(rc_), last_error());                              \
      exit(2);                                                                      \
    }                                                                               \
  } while (0)

#define CHECK_STR_EQ(cstr, len, want)                                               \
  do {                                                                              \
    size_t wl_ = strlen(want);                                                      \
    if ((len) != wl_ || (wl_ > 0 && memcmp((cstr), (want), wl_) != 0)) {            \
      fprintf(stderr, "%s:%d: got \"%.*s\", want \"%s\"\n", __FILE__, __LINE__,     \
              (int)(len), (const char *)(cstr), (want));                            \
      check_failures++;                                                             \
    }                                                                               \
  } while (0)

/* Ends a test program: prints a summary line and returns the exit status. */
static inline int check_done(const char *name) {
  if (check_failures == 0) {
    printf("%s: ok\n", name);
    return 0;
  }
  printf("%s: %d check(s) failed\n", name, check_failures);
  return 1;
}

#endif /* CONNECT_TEST_CHECK_H */
