//! A write transaction: typed changes, checked and indexed, applied to a private copy of the
//! tables until the store commits them.

use std::ops::Deref;

use crate::acl::{Policy, Token};
use crate::ca::{BuiltinSecrets, CaConfiguration, CaRoot};
use crate::catalog::{AgentService, HealthCheck, HealthStatus, Node, ServiceRegistration};
use crate::intentions::Intention;

use super::{Op, StateError, Tables};

/// The changes of one [`Store::write`](super::Store::write).
///
/// Reads through `Deref` see the transaction's own changes. Every change gets the transaction's
/// index as its `ModifyIndex` (and as `CreateIndex` when the row is new). Nothing is visible to
/// others, or persisted, until the closure given to `write` returns `Ok`; returning an error
/// discards every change.
#[derive(Debug)]
pub struct Tx {
    tables: Tables,
    index: u64,
    ops: Vec<Op>,
}

impl Deref for Tx {
    type Target = Tables;

    fn deref(&self) -> &Tables {
        &self.tables
    }
}

impl Tx {
    pub(crate) fn new(tables: Tables, index: u64) -> Tx {
        Tx {
            tables,
            index,
            ops: Vec::new(),
        }
    }

    pub(crate) fn into_parts(self) -> (Tables, Vec<Op>) {
        (self.tables, self.ops)
    }

    /// The index this transaction commits at, if it changes anything.
    pub fn commit_index(&self) -> u64 {
        self.index
    }

    fn push(&mut self, op: Op) {
        self.tables.apply(&op, self.index);
        self.ops.push(op);
    }

    /// Replaces the CA configuration; returns it as stored.
    pub fn set_ca_config(&mut self, mut config: CaConfiguration) -> CaConfiguration {
        config.create_index = self.ca_config().map_or(self.index, |c| c.create_index);
        config.modify_index = self.index;
        self.push(Op::SetCaConfig(config.clone()));
        config
    }

    /// Replaces the CA roots; returns them as stored. A root that is unchanged keeps its
    /// indexes, so clients comparing `ModifyIndex` see only real changes.
    pub fn set_ca_roots(&mut self, roots: Vec<CaRoot>) -> Vec<CaRoot> {
        let roots: Vec<CaRoot> = roots
            .into_iter()
            .map(|mut root| {
                match self.ca_roots().iter().find(|r| r.id == root.id) {
                    Some(old) => {
                        root.create_index = old.create_index;
                        root.modify_index = old.modify_index;
                        if root != *old {
                            root.modify_index = self.index;
                        }
                    }
                    None => {
                        root.create_index = self.index;
                        root.modify_index = self.index;
                    }
                }
                root
            })
            .collect();
        self.push(Op::SetCaRoots(roots.clone()));
        roots
    }

    /// Stores the built-in CA's key and certificate.
    pub fn set_ca_secrets(&mut self, secrets: BuiltinSecrets) {
        if self.ca_secrets() != Some(&secrets) {
            self.push(Op::SetCaSecrets(secrets));
        }
    }

    /// Records that serials up to `last` have been handed out. Lower values are ignored: signers
    /// on several threads may report out of order, and the counter must never go back, or a
    /// restarted CA would reuse serial numbers.
    pub fn set_ca_serial(&mut self, last: u64) {
        if last > self.ca_serial() {
            self.push(Op::SetCaSerial(last));
        }
    }

    /// Inserts or replaces an intention (keyed by its ID, which must be set); returns it as
    /// stored.
    pub fn put_intention(&mut self, mut intention: Intention) -> Result<Intention, StateError> {
        if intention.id.is_empty() {
            return Err(StateError::InvalidRow(
                "intention ID must be set before it is stored".to_owned(),
            ));
        }
        intention.create_index = self
            .intention(&intention.id)
            .map_or(self.index, |i| i.create_index);
        intention.modify_index = self.index;
        self.push(Op::PutIntention(intention.clone()));
        Ok(intention)
    }

    /// Deletes an intention; returns what was deleted.
    pub fn delete_intention(&mut self, id: &str) -> Result<Intention, StateError> {
        let old = self
            .intention(id)
            .cloned()
            .ok_or_else(|| StateError::NotFound(format!("Intention with ID {id:?} not found")))?;
        self.push(Op::DeleteIntention { id: id.to_owned() });
        Ok(old)
    }

    /// Inserts or replaces an ACL token (keyed by its AccessorID, which must be set); returns
    /// it as stored.
    pub fn put_acl_token(&mut self, mut token: Token) -> Result<Token, StateError> {
        if token.accessor_id.is_empty() {
            return Err(StateError::InvalidRow(
                "token AccessorID must be set before it is stored".to_owned(),
            ));
        }
        token.create_index = self
            .acl_token(&token.accessor_id)
            .map_or(self.index, |t| t.create_index);
        token.modify_index = self.index;
        self.push(Op::PutAclToken(token.clone()));
        Ok(token)
    }

    /// Deletes an ACL token; returns what was deleted.
    pub fn delete_acl_token(&mut self, accessor_id: &str) -> Result<Token, StateError> {
        let old = self.acl_token(accessor_id).cloned().ok_or_else(|| {
            StateError::NotFound(format!(
                "ACL token with AccessorID {accessor_id:?} not found"
            ))
        })?;
        self.push(Op::DeleteAclToken {
            accessor_id: accessor_id.to_owned(),
        });
        Ok(old)
    }

    /// Inserts or replaces an ACL policy (keyed by its ID, which must be set); returns it as
    /// stored.
    pub fn put_acl_policy(&mut self, mut policy: Policy) -> Result<Policy, StateError> {
        if policy.id.is_empty() {
            return Err(StateError::InvalidRow(
                "policy ID must be set before it is stored".to_owned(),
            ));
        }
        policy.create_index = self
            .acl_policy(&policy.id)
            .map_or(self.index, |p| p.create_index);
        policy.modify_index = self.index;
        self.push(Op::PutAclPolicy(policy.clone()));
        Ok(policy)
    }

    /// Deletes an ACL policy; returns what was deleted.
    pub fn delete_acl_policy(&mut self, id: &str) -> Result<Policy, StateError> {
        let old = self
            .acl_policy(id)
            .cloned()
            .ok_or_else(|| StateError::NotFound(format!("ACL policy with ID {id:?} not found")))?;
        self.push(Op::DeleteAclPolicy { id: id.to_owned() });
        Ok(old)
    }

    /// Sets whether the ACL bootstrap has happened. Read [`Tables::acl_bootstrapped`] in the
    /// same transaction to make the one-time bootstrap race-free.
    pub fn set_acl_bootstrapped(&mut self, bootstrapped: bool) {
        if self.acl_bootstrapped() != bootstrapped {
            self.push(Op::SetAclBootstrapped(bootstrapped));
        }
    }

    /// Registers or updates a node; returns it as stored.
    ///
    /// Re-registering an identical node writes nothing: agents re-sync periodically, and a
    /// write would wake every blocking query on the catalog for no change.
    pub fn register_node(&mut self, mut node: Node) -> Result<Node, StateError> {
        if node.node.is_empty() {
            return Err(StateError::InvalidRow("node name must be set".to_owned()));
        }
        if let Some(old) = self.catalog().node(&node.node) {
            node.create_index = old.create_index;
            node.modify_index = old.modify_index;
            if node == *old {
                return Ok(node);
            }
        } else {
            node.create_index = self.index;
        }
        node.modify_index = self.index;
        self.push(Op::PutNode(node.clone()));
        Ok(node)
    }

    /// Deregisters a node with its services and checks; `false` if it was not registered (as
    /// in Consul's catalog, that is not an error).
    pub fn deregister_node(&mut self, name: &str) -> bool {
        if self.catalog().node(name).is_none() {
            return false;
        }
        let checks: Vec<String> = self
            .catalog()
            .node_checks(name)
            .map(|c| c.check_id.clone())
            .collect();
        let services: Vec<String> = self
            .catalog()
            .node_services(name)
            .map(|s| s.id.clone())
            .collect();
        for check_id in checks {
            self.push(Op::DeleteCheck {
                node: name.to_owned(),
                check_id,
            });
        }
        for service_id in services {
            self.push(Op::DeleteService {
                node: name.to_owned(),
                service_id,
            });
        }
        self.push(Op::DeleteNode {
            node: name.to_owned(),
        });
        true
    }

    /// Registers (or re-registers) a service instance and its checks on a registered node;
    /// returns the instance as stored.
    ///
    /// The registration replaces the previous definition whole, as Consul's agent does: checks
    /// of the instance that it no longer lists are removed. A check that already exists keeps
    /// its status and output unless the registration sets a `Status`, so re-registering a
    /// healthy instance does not make it flap to critical.
    pub fn register_service(
        &mut self,
        node: &str,
        registration: &ServiceRegistration,
    ) -> Result<AgentService, StateError> {
        let mut registration = registration.clone();
        registration.normalize();
        registration.validate()?;
        if self.catalog().node(node).is_none() {
            return Err(StateError::NotFound(format!(
                "node {node:?} is not registered"
            )));
        }
        let mut service = registration.to_service();
        let checks = registration.health_checks(node);
        let stale: Vec<String> = self
            .catalog()
            .node_checks(node)
            .filter(|c| c.service_id == service.id)
            .filter(|c| !checks.iter().any(|n| n.check_id == c.check_id))
            .map(|c| c.check_id.clone())
            .collect();
        for check_id in stale {
            self.push(Op::DeleteCheck {
                node: node.to_owned(),
                check_id,
            });
        }
        let old = self.catalog().service(node, &service.id);
        if let Some(old) = old {
            service.create_index = old.create_index;
            service.modify_index = old.modify_index;
        }
        if old != Some(&service) {
            if old.is_none() {
                service.create_index = self.index;
            }
            service.modify_index = self.index;
            self.push(Op::PutService {
                node: node.to_owned(),
                service: service.clone(),
            });
        }
        let explicit_status: Vec<bool> = registration
            .all_checks()
            .map(|c| !c.status.is_empty())
            .collect();
        for (mut check, explicit) in checks.into_iter().zip(explicit_status) {
            if let Some(old) = self.catalog().check(node, &check.check_id)
                && !explicit
            {
                check.status = old.status;
                check.output.clone_from(&old.output);
            }
            self.put_check(check);
        }
        Ok(service)
    }

    /// Deregisters a service instance and its checks.
    pub fn deregister_service(&mut self, node: &str, service_id: &str) -> Result<(), StateError> {
        if self.catalog().service(node, service_id).is_none() {
            return Err(StateError::NotFound(format!(
                "Unknown service ID {service_id:?}. Ensure that the service ID is passed, not the service name."
            )));
        }
        let checks: Vec<String> = self
            .catalog()
            .node_checks(node)
            .filter(|c| c.service_id == service_id)
            .map(|c| c.check_id.clone())
            .collect();
        for check_id in checks {
            self.push(Op::DeleteCheck {
                node: node.to_owned(),
                check_id,
            });
        }
        self.push(Op::DeleteService {
            node: node.to_owned(),
            service_id: service_id.to_owned(),
        });
        Ok(())
    }

    /// Registers or replaces a check on a registered node, of one of its services when
    /// `ServiceID` is set (whose name and tags are filled in); returns it as stored.
    pub fn register_check(&mut self, mut check: HealthCheck) -> Result<HealthCheck, StateError> {
        if check.check_id.is_empty() {
            return Err(StateError::InvalidRow("CheckID must be set".to_owned()));
        }
        if self.catalog().node(&check.node).is_none() {
            return Err(StateError::NotFound(format!(
                "node {:?} is not registered",
                check.node
            )));
        }
        if !check.service_id.is_empty() {
            let service = self
                .catalog()
                .service(&check.node, &check.service_id)
                .ok_or_else(|| {
                    StateError::NotFound(format!(
                        "ServiceID {:?} does not exist on node {:?}",
                        check.service_id, check.node
                    ))
                })?;
            check.service_name.clone_from(&service.service);
            check.service_tags.clone_from(&service.tags);
        }
        Ok(self.put_check(check))
    }

    /// Sets a check's status and output (a TTL check's pass/warn/fail). An update that changes
    /// neither writes nothing, so heartbeats do not wake blocking queries.
    pub fn update_check(
        &mut self,
        node: &str,
        check_id: &str,
        status: HealthStatus,
        output: &str,
    ) -> Result<HealthCheck, StateError> {
        let mut check = self
            .catalog()
            .check(node, check_id)
            .cloned()
            .ok_or_else(|| unknown_check(check_id))?;
        check.status = status;
        output.clone_into(&mut check.output);
        Ok(self.put_check(check))
    }

    /// Deregisters a check.
    pub fn deregister_check(&mut self, node: &str, check_id: &str) -> Result<(), StateError> {
        if self.catalog().check(node, check_id).is_none() {
            return Err(unknown_check(check_id));
        }
        self.push(Op::DeleteCheck {
            node: node.to_owned(),
            check_id: check_id.to_owned(),
        });
        Ok(())
    }

    /// Stores a check whose references are checked, unless it is unchanged.
    fn put_check(&mut self, mut check: HealthCheck) -> HealthCheck {
        match self.catalog().check(&check.node, &check.check_id) {
            Some(old) => {
                check.create_index = old.create_index;
                check.modify_index = old.modify_index;
                if check == *old {
                    return check;
                }
            }
            None => check.create_index = self.index,
        }
        check.modify_index = self.index;
        self.push(Op::PutCheck(check.clone()));
        check
    }
}

fn unknown_check(check_id: &str) -> StateError {
    StateError::NotFound(format!(
        "Unknown check ID {check_id:?}. Ensure that the check ID is passed, not the check name."
    ))
}
