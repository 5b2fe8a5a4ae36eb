//! Resolving a job's `user` and `group` in the user database (NSS: files, LDAP, sssd), at load,
//! so that a run never starts as a user that does not exist or lacks its groups.

use nix::unistd::{getgrouplist, Gid, Group, Uid, User};

use super::spec::RunAs;

/// Why a job cannot run as the user (and group) it names.
#[derive(Debug, thiserror::Error)]
pub(super) enum LookupError {
    /// The user database has no such user.
    #[error("no such user \"{0}\"")]
    NoUser(String),
    /// The user database could not be asked.
    #[error("cannot look up user \"{user}\": the user database failed ({source}); check /etc/nsswitch.conf and its services (LDAP, sssd)")]
    UserDatabase {
        /// The user asked for.
        user: String,
        /// The cause.
        source: nix::Error,
    },
    /// Running as another user takes root.
    #[error("running jobs as \"{user}\" needs tickd to run as root (it runs as uid {uid})")]
    NotRoot {
        /// The user asked for.
        user: String,
        /// The daemon's own user.
        uid: Uid,
    },
    /// The group database has no such group.
    #[error("no such group \"{0}\"")]
    NoGroup(String),
    /// The group database could not be asked.
    #[error("cannot look up group \"{group}\": the group database failed ({source}); check /etc/nsswitch.conf and its services")]
    GroupDatabase {
        /// The group asked for.
        group: String,
        /// The cause.
        source: nix::Error,
    },
    /// The user's supplementary groups could not be listed.
    #[error("cannot list the groups of user \"{user}\" ({reason}); its runs would lack their supplementary groups")]
    Groups {
        /// The user asked for.
        user: String,
        /// What went wrong.
        reason: String,
    },
}

impl LookupError {
    /// Whether the user database answered that there is no such user or group: what a machine
    /// lacks, rather than a database that failed or a daemon that cannot switch users.
    pub(super) fn is_missing(&self) -> bool {
        matches!(self, Self::NoUser(_) | Self::NoGroup(_))
    }

    /// Whether the problem is with the `group` key rather than `user`.
    pub(super) fn is_about_group(&self) -> bool {
        matches!(self, Self::NoGroup(_) | Self::GroupDatabase { .. })
    }
}

/// Resolves `user` (and `group`, else the user's primary group) into the ids a child takes.
/// Running as another user needs root.
pub(super) fn resolve(user: &str, group: Option<&str>) -> Result<RunAs, LookupError> {
    let found = match User::from_name(user) {
        Ok(Some(found)) => found,
        Ok(None) => return Err(LookupError::NoUser(user.to_owned())),
        Err(source) => {
            return Err(LookupError::UserDatabase {
                user: user.to_owned(),
                source,
            })
        }
    };
    if !Uid::effective().is_root() && found.uid != Uid::effective() {
        return Err(LookupError::NotRoot {
            user: user.to_owned(),
            uid: Uid::effective(),
        });
    }
    let gid = match group {
        Some(group) => group_id(group)?,
        None => found.gid,
    };
    // A user name from the database holds no NUL; a failure to list the groups is reported,
    // never a run that silently lacks its supplementary groups.
    let groups = std::ffi::CString::new(found.name.clone())
        .map_err(|e| e.to_string())
        .and_then(|name| getgrouplist(&name, gid).map_err(|e| e.to_string()))
        .map_err(|reason| LookupError::Groups {
            user: user.to_owned(),
            reason,
        })?;
    Ok(RunAs {
        user: found.name,
        uid: found.uid.as_raw(),
        gid: gid.as_raw(),
        groups: groups.into_iter().map(|g| g.as_raw()).collect(),
        home: found.dir,
    })
}

/// The id of the group named `group`.
fn group_id(group: &str) -> Result<Gid, LookupError> {
    match Group::from_name(group) {
        Ok(Some(found)) => Ok(found.gid),
        Ok(None) => Err(LookupError::NoGroup(group.to_owned())),
        Err(source) => Err(LookupError::GroupDatabase {
            group: group.to_owned(),
            source,
        }),
    }
}
