//! Unit tests of the boundary: a panic inside a call comes back as `CONNECT_RESULT_PANIC` (or
//! the documented fallback) with its detail, and the process and the handles live on.

use std::ffi::{CStr, c_char};
use std::ptr;

use crate::agent::*;
use crate::error::*;
use crate::net::*;
use crate::service::*;
use crate::testing::panic_next_call;

fn last_error() -> String {
    let mut buf = [0 as c_char; 512];
    let mut n = 0usize;
    // SAFETY: a valid buffer and out pointer.
    let rc = unsafe { connect_last_error_message(buf.as_mut_ptr(), buf.len(), &mut n) };
    assert_eq!(rc, connect_result::Ok);
    // SAFETY: the library NUL-terminates on success.
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

fn dev_agent() -> *const connect_agent {
    let b = connect_agent_config_builder_new();
    let mut agent = ptr::null();
    // SAFETY: a fresh builder and a valid out pointer; the builder is freed once.
    unsafe {
        assert_eq!(
            connect_agent_config_builder_build(b, &mut agent),
            connect_result::Ok
        );
        connect_agent_config_builder_free(b);
    }
    agent
}

/// A service of `agent` with its first leaf.
fn ready_service(agent: *const connect_agent, name: &CStr) -> *const connect_service {
    let mut svc = ptr::null();
    // SAFETY: a live agent, a C string and a valid out pointer.
    unsafe {
        assert_eq!(
            connect_service_new(agent, name.as_ptr(), &mut svc),
            connect_result::Ok
        );
        assert_eq!(connect_service_ready_wait(svc, 20_000), connect_result::Ok);
    }
    svc
}

#[test]
fn a_panic_inside_a_call_is_reported_and_the_process_lives() {
    let agent = dev_agent();
    let mut allowed = false;
    // SAFETY: live handles and valid pointers throughout; each handle is freed once.
    unsafe {
        panic_next_call();
        let rc =
            connect_agent_intention_check(agent, c"web".as_ptr(), c"db".as_ptr(), &mut allowed);
        assert_eq!(rc, connect_result::Panic);
        assert!(last_error().contains("injected panic"), "{}", last_error());
        // The agent still works.
        let rc =
            connect_agent_intention_check(agent, c"web".as_ptr(), c"db".as_ptr(), &mut allowed);
        assert_eq!(rc, connect_result::Ok);
        assert!(allowed);

        let mut svc = ptr::null();
        assert_eq!(
            connect_service_new(agent, c"web".as_ptr(), &mut svc),
            connect_result::Ok
        );
        assert_eq!(connect_service_ready_wait(svc, 20_000), connect_result::Ok);
        // A call that cannot fail returns its documented fallback.
        panic_next_call();
        assert!(!connect_service_is_ready(svc));
        assert!(last_error().contains("injected panic"));
        assert!(connect_service_is_ready(svc));
        panic_next_call();
        assert_eq!(connect_service_get_generation(svc), 0);
        assert!(connect_service_get_generation(svc) > 0);
        // Outputs are not written by a call that panicked.
        let mut out = ptr::null();
        panic_next_call();
        assert_eq!(
            connect_service_new(agent, c"api".as_ptr(), &mut out),
            connect_result::Panic
        );
        assert!(out.is_null());
        connect_service_free(svc);
        connect_agent_free(agent);
    }
}

#[test]
fn result_strings_come_from_the_core_table() {
    for r in connect_result::ALL {
        // SAFETY: the library returns static NUL-terminated strings.
        let (desc, name) = unsafe {
            (
                CStr::from_ptr(connect_result_str(r.code()))
                    .to_str()
                    .unwrap(),
                CStr::from_ptr(connect_result_name(r.code()))
                    .to_str()
                    .unwrap(),
            )
        };
        match r.kind() {
            Some(k) => {
                assert_eq!(desc, k.description());
                assert_eq!(name, k.name());
            }
            None => assert_eq!((desc, name), ("success", "OK")),
        }
    }
    // SAFETY: as above.
    let unknown = unsafe { CStr::from_ptr(connect_result_name(12345)) };
    assert_eq!(unknown.to_str().unwrap(), "INVALID_PARAMETER");
}

#[test]
fn the_error_of_a_failed_call_is_per_thread() {
    // SAFETY: NULL builder is a documented misuse.
    let rc = unsafe { connect_agent_config_builder_set_token(ptr::null_mut(), c"t".as_ptr()) };
    assert_eq!(rc, connect_result::NullParameter);
    let here = last_error();
    assert!(here.contains("NULL"));
    let there = std::thread::spawn(last_error).join().unwrap();
    assert_eq!(there, "");
    assert_eq!(last_error(), here);
}

#[test]
fn intention_actions_are_checked_not_transmuted() {
    let agent = dev_agent();
    // SAFETY: a live agent, freed once.
    unsafe {
        let rc = connect_agent_intention_upsert(agent, c"a".as_ptr(), c"b".as_ptr(), 2);
        assert_eq!(rc, connect_result::InvalidParameter);
        let rc = connect_agent_intention_upsert(
            agent,
            c"a".as_ptr(),
            c"b".as_ptr(),
            connect_intention_action::Deny as u32,
        );
        assert_eq!(rc, connect_result::Ok);
        connect_agent_free(agent);
    }
}

#[test]
fn building_an_agent_inside_an_async_runtime_is_refused_by_the_core_rule() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let b = connect_agent_config_builder_new();
    let mut agent = ptr::null();
    let rc = rt.block_on(async {
        // SAFETY: a fresh builder and a valid out pointer.
        unsafe { connect_agent_config_builder_build(b, &mut agent) }
    });
    assert_eq!(rc, connect_result::InvalidParameter);
    assert!(agent.is_null());
    let msg = last_error();
    assert!(
        msg.starts_with("connect_agent_config_builder_build: "),
        "{msg}"
    );
    assert!(msg.contains("inside an async runtime"), "{msg}");
    // SAFETY: the builder is freed once.
    unsafe { connect_agent_config_builder_free(b) };
}

#[test]
fn builder_text_setters_check_their_values_and_refuse_after_build() {
    let b = connect_agent_config_builder_new();
    // SAFETY: a live builder and C strings; the builder and the agent are freed once.
    unsafe {
        let set_address = connect_agent_config_builder_set_http_address;
        assert_eq!(
            set_address(b, c"  ".as_ptr()),
            connect_result::InvalidParameter
        );
        assert!(last_error().contains("address is empty"));
        let set_dc = connect_agent_config_builder_set_datacenter;
        assert_eq!(set_dc(b, c"".as_ptr()), connect_result::InvalidParameter);
        assert!(last_error().contains("datacenter is empty"));
        let set_ca = connect_agent_config_builder_set_ca_file;
        assert_eq!(set_ca(b, c"".as_ptr()), connect_result::InvalidParameter);
        assert!(last_error().contains("CA file path is empty"));
        let set_token = connect_agent_config_builder_set_token;
        assert_eq!(set_token(b, c"".as_ptr()), connect_result::Ok);
        assert_eq!(set_token(b, ptr::null()), connect_result::NullParameter);
        assert!(last_error().contains("token"), "{}", last_error());
        assert_eq!(set_dc(b, c"dc1".as_ptr()), connect_result::Ok);
        let mut agent = ptr::null();
        assert_eq!(
            connect_agent_config_builder_build(b, &mut agent),
            connect_result::Ok
        );
        assert_eq!(set_dc(b, c"dc2".as_ptr()), connect_result::AlreadyUsed);
        connect_agent_free(agent);
        connect_agent_config_builder_free(b);
    }
}

#[test]
fn cross_datacenter_dials_check_their_arguments_with_typed_results() {
    let agent = dev_agent();
    let svc = ready_service(agent, c"web");
    // SAFETY: live handles and valid pointers throughout; each handle is freed once.
    unsafe {
        let mut conn = ptr::null_mut();
        let none = connect_mesh_gateway_mode::None as u32;
        let local = connect_mesh_gateway_mode::Local as u32;
        let dial = |target: &CStr, dc: &CStr, mode: u32, conn: &mut *mut connect_conn| {
            connect_conn_dial_dc(svc, target.as_ptr(), dc.as_ptr(), mode, 5_000, conn)
        };
        for bad in [c"", c"DC2", c"dc/2", c"dc2.evil"] {
            assert_eq!(
                dial(c"db", bad, none, &mut conn),
                connect_result::InvalidParameter
            );
            assert!(
                last_error().contains("datacenter name must be"),
                "{}",
                last_error()
            );
        }
        assert_eq!(
            dial(c"db", c"dc2", 3, &mut conn),
            connect_result::InvalidParameter
        );
        assert!(
            last_error().contains("mesh gateway mode 3"),
            "{}",
            last_error()
        );
        assert_eq!(
            dial(c"db/x", c"dc2", none, &mut conn),
            connect_result::InvalidParameter
        );
        // The in-process server forwards to no other datacenter: Consul's error, typed.
        assert_eq!(
            dial(c"db", c"dc2", none, &mut conn),
            connect_result::InvalidParameter
        );
        assert_eq!(last_error(), "No path to datacenter: dc2");
        // Through a gateway of our own datacenter, when none is registered.
        assert_eq!(
            dial(c"db", c"dc2", local, &mut conn),
            connect_result::ConnectionRefused
        );
        assert!(
            last_error().contains("mesh gateway in dc1"),
            "{}",
            last_error()
        );
        assert_eq!(
            connect_conn_dial_dc(svc, c"db".as_ptr(), ptr::null(), none, 5_000, &mut conn),
            connect_result::NullParameter
        );
        assert!(conn.is_null(), "no output on failure");
        connect_service_free(svc);
        connect_agent_free(agent);
    }
}

#[test]
fn a_jwt_svid_is_signed_for_the_service_and_validated_by_the_agent() {
    let agent = dev_agent();
    let svc = ready_service(agent, c"web");
    // SAFETY: live handles and valid pointers throughout; each handle is freed once.
    unsafe {
        let mut token = [0 as c_char; 1024];
        let mut n = 0usize;
        assert_eq!(
            connect_service_get_jwt_svid(
                svc,
                c"db".as_ptr(),
                token.as_mut_ptr(),
                token.len(),
                &mut n
            ),
            connect_result::Ok
        );
        assert!(n > 100 && n < 1024, "{n}");
        let mut id = [0 as c_char; 256];
        assert_eq!(
            connect_agent_validate_jwt_svid(
                agent,
                token.as_ptr(),
                c"db".as_ptr(),
                id.as_mut_ptr(),
                id.len(),
                &mut n
            ),
            connect_result::Ok
        );
        let id = CStr::from_ptr(id.as_ptr()).to_str().unwrap().to_owned();
        assert!(id.ends_with("/ns/default/dc/dc1/svc/web"), "{id}");
        let mut other = [0 as c_char; 256];
        assert_eq!(
            connect_agent_validate_jwt_svid(
                agent,
                token.as_ptr(),
                c"api".as_ptr(),
                other.as_mut_ptr(),
                other.len(),
                &mut n
            ),
            connect_result::InvalidParameter
        );
        assert!(last_error().contains("audience"), "{}", last_error());
        assert_eq!(
            connect_service_get_jwt_svid(
                svc,
                c"".as_ptr(),
                token.as_mut_ptr(),
                token.len(),
                &mut n
            ),
            connect_result::InvalidParameter
        );
        assert_eq!(
            connect_service_get_jwt_svid(svc, c"db".as_ptr(), ptr::null_mut(), 0, &mut n),
            connect_result::InsufficientSize
        );
        connect_service_free(svc);
        connect_agent_free(agent);
    }
}
