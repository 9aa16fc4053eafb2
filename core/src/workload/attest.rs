//! Workload attestation on the Workload API's Unix socket: the caller's peer credentials
//! (uid, gid, pid, and with the pid the executable's path) matched against the operator's
//! selectors, as SPIRE's `unix` workload attestor does (SPIRE docs: Unix workload attestor).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Who is on the other end of a Workload API connection, from the kernel (`SO_PEERCRED`) at
/// connect time.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Caller {
    /// The peer's user ID.
    pub uid: u32,
    /// The peer's group ID.
    pub gid: u32,
    /// The peer's process ID, when the kernel tells it.
    pub pid: Option<i32>,
    /// `/proc/<pid>/exe`, when readable (a process of another user, or one that already
    /// exited, has none).
    pub exe: Option<PathBuf>,
}

impl Caller {
    /// A caller with these credentials; the executable is read from `/proc/<pid>/exe`.
    pub fn from_credentials(uid: u32, gid: u32, pid: Option<i32>) -> Caller {
        let exe = pid
            .filter(|p| *p > 0)
            .and_then(|p| std::fs::read_link(format!("/proc/{p}/exe")).ok());
        Caller { uid, gid, pid, exe }
    }
}

/// One registration: the service whose identity a matching caller gets, and the selectors
/// that must all match (an unset selector matches anything; at least one must be set).
/// Configuration: `workload { service = "web", uid = 1000, gid = 1000, path = "/usr/bin/web" }`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct WorkloadSelector {
    /// The service name (the SVID is `spiffe://<td>/ns/default/dc/<dc>/svc/<service>`).
    pub service: String,
    /// The caller's uid must be this.
    pub uid: Option<u32>,
    /// The caller's gid must be this.
    pub gid: Option<u32>,
    /// The caller's executable must be this path.
    pub path: Option<PathBuf>,
}

impl WorkloadSelector {
    /// A registration of `service` for callers running as `uid`.
    pub fn uid(service: impl Into<String>, uid: u32) -> WorkloadSelector {
        WorkloadSelector {
            service: service.into(),
            uid: Some(uid),
            ..WorkloadSelector::default()
        }
    }

    /// The same, also requiring group `gid`.
    pub fn with_gid(mut self, gid: u32) -> WorkloadSelector {
        self.gid = Some(gid);
        self
    }

    /// The same, also requiring the executable `path`.
    pub fn with_path(mut self, path: impl Into<PathBuf>) -> WorkloadSelector {
        self.path = Some(path.into());
        self
    }

    /// Whether the registration is usable: a valid service name and at least one selector
    /// (a registration matching every local process would hand the identity to anyone).
    pub fn check(&self) -> Result<(), crate::Error> {
        crate::spiffe::check_service_name("workload service", &self.service)?;
        if self.uid.is_none() && self.gid.is_none() && self.path.is_none() {
            return Err(crate::Error::new(
                crate::ErrorKind::InvalidParameter,
                format!(
                    "workload {:?} has no selector: set uid, gid or path",
                    self.service
                ),
            ));
        }
        Ok(())
    }

    /// Whether `caller` satisfies every selector set here.
    pub fn matches(&self, caller: &Caller) -> bool {
        self.uid.is_none_or(|u| u == caller.uid)
            && self.gid.is_none_or(|g| g == caller.gid)
            && self
                .path
                .as_deref()
                .is_none_or(|p| caller.exe.as_deref() == Some(Path::new(p)))
    }
}

/// The services `caller` is entitled to, in registration order, each once. Empty: the caller
/// is not a registered workload.
pub fn attest(registrations: &[WorkloadSelector], caller: &Caller) -> Vec<String> {
    let mut services: Vec<String> = Vec::new();
    for r in registrations.iter().filter(|r| r.matches(caller)) {
        if !services.contains(&r.service) {
            services.push(r.service.clone());
        }
    }
    services
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(uid: u32, gid: u32, exe: Option<&str>) -> Caller {
        Caller {
            uid,
            gid,
            pid: Some(42),
            exe: exe.map(PathBuf::from),
        }
    }

    #[test]
    fn every_set_selector_must_match() {
        let web = WorkloadSelector::uid("web", 1000)
            .with_gid(100)
            .with_path("/usr/bin/web");
        assert!(web.matches(&caller(1000, 100, Some("/usr/bin/web"))));
        assert!(!web.matches(&caller(1001, 100, Some("/usr/bin/web"))));
        assert!(!web.matches(&caller(1000, 101, Some("/usr/bin/web"))));
        assert!(!web.matches(&caller(1000, 100, Some("/usr/bin/other"))));
        assert!(
            !web.matches(&caller(1000, 100, None)),
            "an unknown path never matches"
        );
        assert!(WorkloadSelector::uid("web", 0).matches(&caller(0, 5, None)));
    }

    #[test]
    fn attestation_lists_each_matching_service_once_in_order() {
        let regs = vec![
            WorkloadSelector::uid("web", 1000),
            WorkloadSelector::uid("db", 2000),
            WorkloadSelector::uid("api", 1000),
            WorkloadSelector::uid("web", 1000).with_gid(7),
        ];
        assert_eq!(attest(&regs, &caller(1000, 7, None)), ["web", "api"]);
        assert_eq!(attest(&regs, &caller(2000, 7, None)), ["db"]);
        assert!(attest(&regs, &caller(3000, 7, None)).is_empty());
    }

    #[test]
    fn a_registration_needs_a_name_and_a_selector() {
        assert!(WorkloadSelector::uid("web", 1).check().is_ok());
        let bare = WorkloadSelector {
            service: "web".into(),
            ..WorkloadSelector::default()
        };
        assert!(bare.check().is_err());
        assert!(WorkloadSelector::uid("bad name", 1).check().is_err());
    }

    #[test]
    fn this_process_is_read_from_proc() {
        let me = Caller::from_credentials(0, 0, Some(std::process::id() as i32));
        assert_eq!(me.exe, std::env::current_exe().ok());
    }
}
