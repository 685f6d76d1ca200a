//! The user a container runs for, and the passwd/group entries that make that user and
//! their groups resolve inside an image that has never heard of them.

use crate::error::Result;
use std::ffi::CString;
use std::path::PathBuf;

/// Looking the container's user up on the host (NSS).
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("user {0}: not known on this host")]
    Unknown(String),
    #[error("looking up user {name}: {source}")]
    LookUpName {
        name: String,
        source: std::io::Error,
    },
    #[error("listing the groups of {name}: {source}")]
    ListGroups {
        name: String,
        source: std::io::Error,
    },
    #[error("looking up uid {uid}: {source}")]
    LookUpUid { uid: u32, source: std::io::Error },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub gid: u32,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, the primary group included when the host lists it.
    pub groups: Vec<Group>,
    pub home: PathBuf,
    pub gecos: String,
}

impl User {
    pub fn gids(&self) -> Vec<u32> {
        let mut gids: Vec<u32> = self.groups.iter().map(|g| g.gid).collect();
        if !gids.contains(&self.gid) {
            gids.insert(0, self.gid);
        }
        gids
    }

    /// Looks the user up on the host (NSS), with the groups the host gives them.
    pub fn by_name(name: &str) -> Result<User> {
        let user = nix::unistd::User::from_name(name)
            .map_err(|e| UserError::LookUpName {
                name: name.to_string(),
                source: e.into(),
            })?
            .ok_or_else(|| UserError::Unknown(name.to_string()))?;
        let cname = CString::new(name).map_err(|_| UserError::Unknown(name.to_string()))?;
        let gids =
            nix::unistd::getgrouplist(&cname, user.gid).map_err(|e| UserError::ListGroups {
                name: name.to_string(),
                source: e.into(),
            })?;
        Ok(Self::from_parts(&user, gids.iter().map(|g| g.as_raw()).collect()).with_primary_group())
    }

    /// Looks the user up by uid; `gids` are the supplementary groups Slurm gives the job.
    pub fn by_uid(uid: u32, gid: u32, gids: Vec<u32>) -> Result<User> {
        let user = nix::unistd::User::from_uid(uid.into())
            .map_err(|e| UserError::LookUpUid {
                uid,
                source: e.into(),
            })?
            .ok_or_else(|| UserError::Unknown(uid.to_string()))?;
        let mut user = Self::from_parts(&user, gids);
        user.gid = gid;
        Ok(user.with_primary_group())
    }

    /// Lists the primary group among the groups, named now: every name is looked up
    /// (NSS: files, sssd, LDAP) when the user is, in the caller, never after the fork
    /// that builds the container (a forked child of a threaded process must not).
    fn with_primary_group(mut self) -> User {
        if !self.groups.iter().any(|g| g.gid == self.gid) {
            let primary = Group {
                gid: self.gid,
                name: group_name(self.gid),
            };
            self.groups.insert(0, primary);
        }
        self
    }

    fn from_parts(user: &nix::unistd::User, gids: Vec<u32>) -> User {
        let groups = gids
            .into_iter()
            .map(|gid| Group {
                gid,
                name: group_name(gid),
            })
            .collect();
        User {
            name: user.name.clone(),
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            groups,
            home: user.dir.clone(),
            gecos: user.gecos.to_str().unwrap_or("").replace([':', '\n'], " "),
        }
    }
}

/// The group's name from the host's name service, or `gidN` when it has none.
fn group_name(gid: u32) -> String {
    match nix::unistd::Group::from_gid(gid.into()) {
        Ok(Some(g)) => g.name,
        _ => format!("gid{gid}"),
    }
}

/// The image's passwd with the user's host entry. Image lines that name the user or
/// their uid are dropped first: an image may not give the user another uid for their
/// name (lookups take the first line), nor another name for their uid.
pub fn merge_passwd(image: &str, user: &User) -> String {
    let mut out: String = image
        .lines()
        .filter(|line| {
            let mut fields = line.split(':');
            let name = fields.next();
            let uid = fields.nth(1).and_then(|u| u.parse::<u32>().ok());
            name != Some(user.name.as_str()) && uid != Some(user.uid)
        })
        .map(|line| format!("{line}\n"))
        .collect();
    out.push_str(&format!(
        "{}:x:{}:{}:{}:{}:/bin/sh\n",
        user.name,
        user.uid,
        user.gid,
        user.gecos,
        user.home.display()
    ));
    out
}

pub fn merge_group(image: &str, user: &User) -> String {
    let mut lines: Vec<String> = image.lines().map(str::to_string).collect();
    let mut wanted: Vec<Group> = user.groups.clone();
    if !wanted.iter().any(|g| g.gid == user.gid) {
        // The lookups list it (`with_primary_group`); no name service is asked here,
        // after the fork.
        wanted.insert(
            0,
            Group {
                gid: user.gid,
                name: format!("gid{}", user.gid),
            },
        );
    }
    for group in wanted {
        let found = lines
            .iter_mut()
            .find(|l| l.split(':').nth(2).and_then(|g| g.parse::<u32>().ok()) == Some(group.gid));
        match found {
            Some(line) => {
                let mut fields: Vec<String> = line.split(':').map(str::to_string).collect();
                while fields.len() < 4 {
                    fields.push(String::new());
                }
                let members: Vec<&str> = fields[3].split(',').filter(|m| !m.is_empty()).collect();
                if !members.contains(&user.name.as_str()) && group.gid != user.gid {
                    let mut members: Vec<String> = members.iter().map(|m| m.to_string()).collect();
                    members.push(user.name.clone());
                    fields[3] = members.join(",");
                    *line = fields.join(":");
                }
            }
            None => {
                let name = if lines
                    .iter()
                    .any(|l| l.split(':').next() == Some(group.name.as_str()))
                {
                    format!("{}-{}", group.name, group.gid) // the image uses this name for another gid
                } else {
                    group.name.clone()
                };
                let members = if group.gid == user.gid {
                    String::new()
                } else {
                    user.name.clone()
                };
                lines.push(format!("{name}:x:{}:{members}", group.gid));
            }
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> User {
        User {
            name: "alice".into(),
            uid: 1001,
            gid: 1001,
            groups: vec![
                Group {
                    gid: 1001,
                    name: "alice".into(),
                },
                Group {
                    gid: 2000,
                    name: "lab".into(),
                },
                Group {
                    gid: 100,
                    name: "users".into(),
                },
            ],
            home: "/home/alice".into(),
            gecos: "Alice".into(),
        }
    }

    #[test]
    fn passwd_gains_the_user_once() {
        let image = "root:x:0:0:root:/root:/bin/sh";
        let merged = merge_passwd(image, &alice());
        assert_eq!(
            merged,
            "root:x:0:0:root:/root:/bin/sh\nalice:x:1001:1001:Alice:/home/alice:/bin/sh\n"
        );
        assert_eq!(merge_passwd(&merged, &alice()), merged);
    }

    #[test]
    fn the_image_cannot_redefine_the_user() {
        let image = "alice:x:0:0:fake:/root:/bin/sh\nroot:x:0:0:root:/root:/bin/sh\nbuilder:x:1001:1001::/b:/bin/sh\n";
        let merged = merge_passwd(image, &alice());
        assert_eq!(
            merged,
            "root:x:0:0:root:/root:/bin/sh\nalice:x:1001:1001:Alice:/home/alice:/bin/sh\n"
        );
    }

    #[test]
    fn groups_are_added_or_joined() {
        let image = "root:x:0:\nusers:x:100:bob\n";
        let merged = merge_group(image, &alice());
        assert!(merged.contains("users:x:100:bob,alice\n"));
        assert!(merged.contains("alice:x:1001:\n"));
        assert!(merged.contains("lab:x:2000:alice\n"));
        assert_eq!(merge_group(&merged, &alice()), merged);
    }

    #[test]
    fn a_name_clash_gets_a_distinct_name() {
        let merged = merge_group("lab:x:3000:\n", &alice());
        assert!(merged.contains("lab-2000:x:2000:alice"));
    }
}
