//! Access checks of the local API against the policy in force: which collections this node
//! may read and write, and the validation of `_policy` entries written here.

use officesync_protocol::policy::{parse_entry, parse_key, POLICY_COLLECTION};
use officesync_protocol::signing::NODES_COLLECTION;
use officesync_protocol::status::STATUS_COLLECTION;

use super::error::ApiError;
use super::gate::Who;
use crate::policy::PolicyHandle;

/// What the API needs to decide access: this node's name, whether it is an admin (named in
/// `[cluster] admins` and holding an admin certificate), and the policy.
#[derive(Debug, Clone)]
pub struct Access {
    node: String,
    is_admin: bool,
    policy: PolicyHandle,
}

impl Access {
    /// Access of `node` (an admin when `is_admin`) under `policy`.
    pub fn new(node: &str, is_admin: bool, policy: PolicyHandle) -> Self {
        Self {
            node: node.to_owned(),
            is_admin,
            policy,
        }
    }

    /// True when this node is an admin node (named in `[cluster] admins`, with an admin
    /// certificate).
    pub fn is_admin(&self) -> bool {
        self.is_admin
    }

    /// The policy handle.
    pub fn policy(&self) -> &PolicyHandle {
        &self.policy
    }

    /// May `who` read `collection`? Its role and collection list first, then this node's
    /// policy.
    pub(crate) fn check_read(&self, who: &Who, collection: &str) -> Result<(), ApiError> {
        if !who.0.may_read(collection) {
            return Err(ApiError::Forbidden(format!(
                "{} may not read collection {collection:?} (see `officesync user list`)",
                who.describe()
            )));
        }
        if self.policy.current().may_read(&self.node, collection) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "node {} may not read collection {collection:?} (see `officesync policy show`)",
                self.node
            )))
        }
    }

    /// May `who` write `value` (`None`: a delete) at `key` of `collection`? Its role and
    /// collection list first, then this node's policy. `_policy` takes only valid entries, only
    /// from an admin user, and only at an admin node.
    pub(crate) fn check_write(
        &self,
        who: &Who,
        collection: &str,
        key: &str,
        value: Option<&[u8]>,
    ) -> Result<(), ApiError> {
        if !who.0.may_write(collection) {
            let why = if collection.starts_with('_') {
                "only an admin may write system collections"
            } else {
                "see `officesync user list`"
            };
            return Err(ApiError::Forbidden(format!(
                "{} may not write collection {collection:?} ({why})",
                who.describe()
            )));
        }
        if collection == NODES_COLLECTION {
            return Err(ApiError::Forbidden(format!(
                "{NODES_COLLECTION} holds the nodes' certificates and only officesyncd writes it"
            )));
        }
        if collection == STATUS_COLLECTION {
            return Err(ApiError::Forbidden(format!(
                "{STATUS_COLLECTION} holds the nodes' status reports and only officesyncd writes it"
            )));
        }
        if collection == officesync_protocol::frontier::FRONTIER_COLLECTION {
            return Err(ApiError::Forbidden(format!(
                "{collection} holds the frontiers of tombstone collection and only officesyncd \
                 writes it"
            )));
        }
        if collection == POLICY_COLLECTION {
            if !self.is_admin {
                return Err(ApiError::Forbidden(format!(
                    "node {} may not write {POLICY_COLLECTION}: only an admin node (named in \
                     [cluster] admins, with a certificate issued with --admin) may",
                    self.node
                )));
            }
            match value {
                Some(v) => parse_entry(key, v).map(drop),
                None => parse_key(key).map(drop),
            }
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
            return Ok(());
        }
        if self.policy.current().may_write(&self.node, collection) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "node {} may not write collection {collection:?} (see `officesync policy show`)",
                self.node
            )))
        }
    }
}
