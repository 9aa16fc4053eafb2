// raii_echo: libconnect from C++17 with RAII wrappers: every handle is a std::unique_ptr with
// its connect_*_free as deleter, and a failing call throws connect::error carrying the code
// and the detail message. Runs a dev agent in this process: an echo server on one thread,
// an allowed client ("web") and a denied one ("api") on the main thread.
#include <connect.h>

#include <cstdio>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>

namespace connect {

class error : public std::runtime_error {
 public:
  error(connect_result code, const std::string &what) : std::runtime_error(what), code_(code) {}
  connect_result code() const noexcept { return code_; }

 private:
  connect_result code_;
};

inline void check(connect_result rc, const char *what) {
  if (rc == CONNECT_OK) return;
  char detail[512] = {0};
  size_t n = 0;
  connect_last_error_message(detail, sizeof detail, &n);
  throw error(rc, std::string(what) + ": " + connect_result_name(rc) + ": " + detail);
}

struct deleter {
  void operator()(connect_agent_config_builder *p) const noexcept { connect_agent_config_builder_free(p); }
  void operator()(const connect_agent *p) const noexcept { connect_agent_free(p); }
  void operator()(const connect_service *p) const noexcept { connect_service_free(p); }
  void operator()(connect_listener *p) const noexcept { connect_listener_free(p); }
  void operator()(connect_conn *p) const noexcept { connect_conn_free(p); }
};

using agent = std::unique_ptr<const connect_agent, deleter>;
using service = std::unique_ptr<const connect_service, deleter>;
using listener = std::unique_ptr<connect_listener, deleter>;
using conn = std::unique_ptr<connect_conn, deleter>;

inline agent dev_agent() {
  std::unique_ptr<connect_agent_config_builder, deleter> b(connect_agent_config_builder_new());
  if (!b) throw error(CONNECT_RESULT_PANIC, "connect_agent_config_builder_new");
  const connect_agent *a = nullptr;
  check(connect_agent_config_builder_build(b.get(), &a), "agent");
  return agent(a);
}

inline service make_service(const agent &a, const char *name) {
  const connect_service *s = nullptr;
  check(connect_service_new(a.get(), name, &s), "service");
  service owned(s);
  check(connect_service_ready_wait(s, 20000), "ready");
  return owned;
}

inline void write_all(const conn &c, const std::string &data) {
  size_t n = 0;
  check(connect_conn_write(c.get(), reinterpret_cast<const uint8_t *>(data.data()), data.size(), &n),
        "write");
}

inline std::string read_to_end(const conn &c) {
  std::string out;
  for (;;) {
    uint8_t buf[1024];
    size_t n = 0;
    check(connect_conn_read(c.get(), buf, sizeof buf, &n), "read");
    if (n == 0) return out;
    out.append(reinterpret_cast<const char *>(buf), n);
  }
}

}  // namespace connect

int main() {
  try {
    connect::agent agent = connect::dev_agent();
    connect::check(connect_agent_intention_upsert(agent.get(), "*", "echo", CONNECT_INTENTION_ACTION_DENY),
                   "intention");
    connect::check(connect_agent_intention_upsert(agent.get(), "web", "echo", CONNECT_INTENTION_ACTION_ALLOW),
                   "intention");
    connect::service echo = connect::make_service(agent, "echo");
    connect::service web = connect::make_service(agent, "web");
    connect::service api = connect::make_service(agent, "api");

    connect_listener *raw_listener = nullptr;
    connect::check(connect_listener_new(echo.get(), "127.0.0.1:0", &raw_listener), "listen");
    connect::listener listener(raw_listener);
    const std::string addr = "127.0.0.1:" + std::to_string(connect_listener_get_port(listener.get()));

    std::thread server([&listener] {
      connect_conn *raw = nullptr;
      if (connect_listener_accept(listener.get(), 20000, &raw) != CONNECT_OK) return;
      connect::conn c(raw);
      try {
        connect::write_all(c, connect::read_to_end(c));
        connect_conn_shutdown(c.get());
      } catch (const connect::error &e) {
        std::fprintf(stderr, "server: %s\n", e.what());
      }
    });

    // Denied: the handshake passes on the client side (TLS 1.3), the first read fails.
    try {
      connect_conn *raw = nullptr;
      connect::check(connect_conn_dial_addr(api.get(), addr.c_str(), "echo", 10000, &raw), "dial");
      connect::conn c(raw);
      connect::write_all(c, "let me in");
      connect::read_to_end(c);
      std::fprintf(stderr, "api was not denied\n");
      server.join();
      return 1;
    } catch (const connect::error &e) {
      std::printf("api denied: %s\n", e.what());
      if (e.code() != CONNECT_RESULT_TLS) {
        server.join();
        return 1;
      }
    }

    connect_conn *raw = nullptr;
    connect::check(connect_conn_dial_addr(web.get(), addr.c_str(), "echo", 10000, &raw), "dial");
    connect::conn c(raw);
    connect::write_all(c, "hello from C++");
    connect::check(connect_conn_shutdown(c.get()), "shutdown");
    const std::string reply = connect::read_to_end(c);
    server.join();
    std::printf("web got: %s\n", reply.c_str());
    return reply == "hello from C++" ? 0 : 1;
  } catch (const connect::error &e) {
    std::fprintf(stderr, "raii_echo: %s\n", e.what());
    return 1;
  }
}
