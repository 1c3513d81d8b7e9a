//! Access control, as PostgreSQL does it: roles (users are roles that may log in), role
//! membership, owners, and privileges granted on the database, schemas and tables.
//!
//! ```text
//!  auth.superusers ─┐                    ┌─ CREATE/ALTER/DROP ROLE, GRANT role TO role
//!  auth.users ──────┼─► AccessControl ◄──┼─ GRANT/REVOKE privileges ON objects
//!                   │   (published copy  └─ owners recorded by CREATE, forgotten by DROP
//!  catalog.json ────┘    of the catalog's
//!     "access"            access section)
//!                           │
//!        frontends: login ──┤── planning: every table a plan reads or writes (`check.rs`)
//!                           └── has_table_privilege, system.table_privileges, system.queries
//! ```
//!
//! What is persisted lives in the catalog file ([`AccessFile`]), changed under the catalog's
//! lock like every other object; the checks read a copy published after each commit, so a check
//! never waits for a catalog write. Roles of the configuration (`auth.superusers`,
//! `auth.users`) always exist; SQL cannot drop them or take a configured superuser's rights.
//!
//! An object nobody recorded an owner for (one created before access control, or one of the
//! schemas that always exist) is owned by the first configured superuser; the default schema
//! grants USAGE to PUBLIC, as PostgreSQL's `public` schema does since version 15.

mod check;
pub mod statement;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, RwLock};

use ember_config::AuthConfig;
use ember_planner::session::DEFAULT_SCHEMA;
use serde::{Deserialize, Serialize};

pub(crate) use check::{PlanAccess, ViewPlan, provider_address};
pub use statement::AccessStatement;

use crate::error::{Error, Result};
use crate::users::{Method, Users, Verifier};

/// The most roles the catalog holds: each is checked on every login and statement.
const MAX_ROLES: usize = 10_000;
/// How deep role membership may nest.
const MAX_MEMBERSHIP_DEPTH: usize = 64;

/// A set of privileges, written as PostgreSQL writes ACLs (`r` SELECT, `a` INSERT, `w` UPDATE,
/// `d` DELETE, `D` TRUNCATE, `U` USAGE, `C` CREATE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Privileges(u8);

impl Privileges {
    /// None.
    pub const NONE: Self = Self(0);
    /// `SELECT` (`r`).
    pub const SELECT: Self = Self(1);
    /// `INSERT` (`a`).
    pub const INSERT: Self = Self(2);
    /// `UPDATE` (`w`).
    pub const UPDATE: Self = Self(4);
    /// `DELETE` (`d`).
    pub const DELETE: Self = Self(8);
    /// `TRUNCATE` (`D`).
    pub const TRUNCATE: Self = Self(16);
    /// `USAGE` (`U`) of a schema.
    pub const USAGE: Self = Self(32);
    /// `CREATE` (`C`) in a schema or the database.
    pub const CREATE: Self = Self(64);

    /// In PostgreSQL's order, with ACL letters and names.
    const ALL: [(Self, char, &'static str); 7] = [
        (Self::INSERT, 'a', "INSERT"),
        (Self::SELECT, 'r', "SELECT"),
        (Self::UPDATE, 'w', "UPDATE"),
        (Self::DELETE, 'd', "DELETE"),
        (Self::TRUNCATE, 'D', "TRUNCATE"),
        (Self::USAGE, 'U', "USAGE"),
        (Self::CREATE, 'C', "CREATE"),
    ];

    /// Every privilege a table has.
    pub const TABLE: Self = Self(1 | 2 | 4 | 8 | 16);
    /// Every privilege a schema has.
    pub const SCHEMA: Self = Self(32 | 64);
    /// Every privilege the database has (of those Ember checks).
    pub const DATABASE: Self = Self(64);

    /// Both sets.
    pub fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// This set without `other`.
    pub fn without(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }

    /// Whether every privilege of `other` is in this set.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The privileges' names (`SELECT`, ...), in PostgreSQL's order.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Self::ALL
            .into_iter()
            .filter(move |(p, _, _)| self.contains(*p))
            .map(|(_, _, name)| name)
    }

    /// The privilege called `name` (any case), if it is one.
    pub fn named(name: &str) -> Option<Self> {
        let name = name.trim();
        Self::ALL
            .into_iter()
            .find(|(_, _, n)| n.eq_ignore_ascii_case(name))
            .map(|(p, _, _)| p)
    }

    fn letters(self) -> String {
        Self::ALL
            .into_iter()
            .filter(|(p, _, _)| self.contains(*p))
            .map(|(_, letter, _)| letter)
            .collect()
    }

    fn from_letters(letters: &str) -> Option<Self> {
        letters.chars().try_fold(Self::NONE, |set, c| {
            let (p, _, _) = Self::ALL.into_iter().find(|(_, l, _)| *l == c)?;
            Some(set.union(p))
        })
    }
}

impl Serialize for Privileges {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.letters())
    }
}

impl<'de> Deserialize<'de> for Privileges {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let letters = String::deserialize(deserializer)?;
        Self::from_letters(&letters)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown privileges {letters:?}")))
    }
}

/// What privileges are granted on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Securable {
    /// The database (Ember's one catalog): `CREATE` makes schemas.
    Database,
    /// A schema.
    Schema {
        /// Its name.
        name: String,
    },
    /// A table or view.
    Table {
        /// Its schema.
        schema: String,
        /// Its name.
        name: String,
    },
}

impl Securable {
    pub(crate) fn table(schema: &str, name: &str) -> Self {
        Securable::Table {
            schema: schema.to_string(),
            name: name.to_string(),
        }
    }

    pub(crate) fn schema(name: &str) -> Self {
        Securable::Schema {
            name: name.to_string(),
        }
    }

    /// The privileges this kind of object has.
    fn applicable(&self) -> Privileges {
        match self {
            Securable::Database => Privileges::DATABASE,
            Securable::Schema { .. } => Privileges::SCHEMA,
            Securable::Table { .. } => Privileges::TABLE,
        }
    }

    /// "table s.t", as PostgreSQL's messages name objects.
    fn describe(&self) -> String {
        match self {
            Securable::Database => "database".to_string(),
            Securable::Schema { name } => format!("schema {name}"),
            Securable::Table { schema, name } => format!("table {schema}.{name}"),
        }
    }
}

/// The access section of the catalog file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct AccessFile {
    /// Roles created with SQL.
    #[serde(default)]
    pub(crate) roles: Vec<RoleEntry>,
    /// Owners and grants, by object.
    #[serde(default)]
    pub(crate) objects: Vec<ObjectAcl>,
}

/// A role created with SQL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct RoleEntry {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) superuser: bool,
    #[serde(default)]
    pub(crate) login: bool,
    /// May create, alter and drop roles that are not superusers.
    #[serde(default)]
    pub(crate) create_role: bool,
    /// The password verifier (SCRAM-SHA-256 or md5), never the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) password: Option<String>,
    /// Roles whose privileges this role has.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) member_of: Vec<String>,
    /// The role that created it, which administers it if it has CREATEROLE (as in PostgreSQL
    /// 16, where the creator holds ADMIN OPTION on the roles it creates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) created_by: Option<String>,
}

/// An object's owner and the privileges granted on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ObjectAcl {
    pub(crate) object: Securable,
    pub(crate) owner: String,
    #[serde(default)]
    pub(crate) grants: Vec<AclItem>,
}

/// Privileges granted to one role (or to PUBLIC: the empty name) by another.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct AclItem {
    pub(crate) grantee: String,
    pub(crate) privileges: Privileges,
    pub(crate) grantor: String,
}

/// The name PUBLIC has in an [`AclItem`].
pub(crate) const PUBLIC: &str = "";

impl AccessFile {
    pub(crate) fn role(&self, name: &str) -> Option<&RoleEntry> {
        self.roles.iter().find(|r| r.name == name)
    }

    pub(crate) fn role_mut(&mut self, name: &str) -> Option<&mut RoleEntry> {
        self.roles.iter_mut().find(|r| r.name == name)
    }

    fn acl(&self, object: &Securable) -> Option<&ObjectAcl> {
        self.objects.iter().find(|o| &o.object == object)
    }

    /// The entry of `object`, made with its default owner and grants if there is none.
    pub(crate) fn acl_mut(&mut self, object: &Securable, default_owner: &str) -> &mut ObjectAcl {
        let position = match self.objects.iter().position(|o| &o.object == object) {
            Some(position) => position,
            None => {
                self.objects.push(ObjectAcl {
                    object: object.clone(),
                    owner: default_owner.to_string(),
                    grants: default_grants(object, default_owner),
                });
                self.objects.len() - 1
            }
        };
        &mut self.objects[position]
    }

    /// Records that `owner` created `object` (replacing what an earlier object of that name
    /// had).
    pub(crate) fn created(&mut self, object: Securable, owner: &str) {
        self.objects.retain(|o| o.object != object);
        self.objects.push(ObjectAcl {
            grants: default_grants(&object, owner),
            object,
            owner: owner.to_string(),
        });
    }

    /// Records that `owner` created `object`, unless it has an entry already (`CREATE OR
    /// REPLACE` keeps the owner and grants, as in PostgreSQL).
    pub(crate) fn created_if_new(&mut self, object: Securable, owner: &str) {
        if self.acl(&object).is_none() {
            self.created(object, owner);
        }
    }

    /// Forgets a dropped table or view.
    pub(crate) fn dropped_table(&mut self, schema: &str, name: &str) {
        let object = Securable::table(schema, name);
        self.objects.retain(|o| o.object != object);
    }

    /// Moves a renamed table's or view's owner and grants to its new name.
    pub(crate) fn renamed_table(&mut self, schema: &str, from: &str, to: &str) {
        let (old, new) = (Securable::table(schema, from), Securable::table(schema, to));
        self.objects.retain(|o| o.object != new);
        for object in &mut self.objects {
            if object.object == old {
                object.object = new.clone();
            }
        }
    }

    /// Forgets a dropped schema and everything in it.
    pub(crate) fn dropped_schema(&mut self, schema: &str) {
        self.objects.retain(|o| match &o.object {
            Securable::Schema { name } => name != schema,
            Securable::Table { schema: s, .. } => s != schema,
            Securable::Database => true,
        });
    }
}

/// What an object grants when it is created: PUBLIC may use the default schema.
fn default_grants(object: &Securable, owner: &str) -> Vec<AclItem> {
    match object {
        Securable::Schema { name } if name == DEFAULT_SCHEMA => vec![AclItem {
            grantee: PUBLIC.to_string(),
            privileges: Privileges::USAGE,
            grantor: owner.to_string(),
        }],
        _ => vec![],
    }
}

/// What a role is, from the configuration or the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleInfo {
    /// Its name.
    pub name: String,
    /// Whether it passes every privilege check.
    pub superuser: bool,
    /// Whether it may log in.
    pub login: bool,
    /// Whether it may create roles.
    pub create_role: bool,
    /// Whether it comes from the configuration (SQL cannot drop it).
    pub configured: bool,
    /// The roles it is a direct member of.
    pub member_of: Vec<String>,
}

/// Roles, memberships, owners and grants, as every check reads them.
#[derive(Debug)]
pub struct AccessControl {
    method: Method,
    /// Verifiers of `auth.users`.
    users: Users,
    /// `auth.superusers`; the first owns what has no recorded owner.
    superusers: Vec<String>,
    published: RwLock<Arc<Published>>,
}

/// What the checks read: the catalog's access section and the objects it governs, as of the
/// last commit.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Published {
    pub(crate) access: AccessFile,
    /// Schemas users created (the default schema always exists besides).
    pub(crate) schemas: Vec<String>,
    /// Tables and views of the catalog: (schema, name).
    pub(crate) tables: HashSet<(String, String)>,
    /// Views: (schema, name) → the schema their definition's unqualified names refer to.
    pub(crate) views: HashMap<(String, String), String>,
}

impl Published {
    /// Schemas whose objects access control governs.
    pub(crate) fn user_schemas(&self) -> HashSet<String> {
        self.schemas
            .iter()
            .cloned()
            .chain([DEFAULT_SCHEMA.to_string()])
            .collect()
    }
}

/// PostgreSQL's predefined roles Ember honours: members may read (external tables) or write
/// (`COPY ... TO`) files of the server.
pub const PREDEFINED_ROLES: [&str; 2] = ["pg_read_server_files", "pg_write_server_files"];

impl AccessControl {
    /// Roles of the configuration (`auth.*`); those of the catalog come when it is opened.
    pub fn new(auth: &AuthConfig) -> Result<Self> {
        let superusers = auth.superusers.clone();
        if superusers.is_empty() {
            return Err(Error::NotSupported(
                "auth.superusers must name at least one role".into(),
            ));
        }
        Ok(Self {
            method: Method::parse(&auth.method)?,
            users: Users::parse(&auth.users)?,
            superusers,
            published: RwLock::default(),
        })
    }

    /// Makes what a catalog commit holds the state checks read.
    pub(crate) fn publish(&self, next: Published) {
        let mut published = self.published.write().unwrap_or_else(|e| e.into_inner());
        if **published != next {
            *published = Arc::new(next);
        }
    }

    pub(crate) fn published(&self) -> Arc<Published> {
        Arc::clone(&self.published.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn current(&self) -> Arc<Published> {
        self.published()
    }

    /// How clients authenticate (`auth.method`).
    pub fn method(&self) -> Method {
        self.method
    }

    /// The superuser that owns objects nobody recorded an owner for.
    pub fn bootstrap_superuser(&self) -> &str {
        &self.superusers[0]
    }

    /// The role called `name`, if there is one.
    pub fn role(&self, name: &str) -> Option<RoleInfo> {
        self.role_in(&self.current().access, name)
    }

    fn role_in(&self, file: &AccessFile, name: &str) -> Option<RoleInfo> {
        if self.superusers.iter().any(|s| s == name) {
            return Some(RoleInfo {
                name: name.to_string(),
                superuser: true,
                login: true,
                create_role: true,
                configured: true,
                member_of: file
                    .role(name)
                    .map(|r| r.member_of.clone())
                    .unwrap_or_default(),
            });
        }
        if PREDEFINED_ROLES.contains(&name) {
            return Some(RoleInfo {
                name: name.to_string(),
                superuser: false,
                login: false,
                create_role: false,
                configured: true,
                member_of: vec![],
            });
        }
        if let Some(role) = file.role(name) {
            return Some(RoleInfo {
                name: role.name.clone(),
                superuser: role.superuser,
                login: role.login,
                create_role: role.create_role || role.superuser,
                configured: self.users.verifier(name).is_some(),
                member_of: role.member_of.clone(),
            });
        }
        self.users.verifier(name).map(|_| RoleInfo {
            name: name.to_string(),
            superuser: false,
            login: true,
            create_role: false,
            configured: true,
            member_of: vec![],
        })
    }

    /// Every role: the configured ones, then those created with SQL, by name.
    pub fn roles(&self) -> Vec<RoleInfo> {
        let file = self.current();
        let names: BTreeSet<&str> = self
            .superusers
            .iter()
            .map(String::as_str)
            .chain(self.users.names())
            .chain(PREDEFINED_ROLES)
            .chain(file.access.roles.iter().map(|r| r.name.as_str()))
            .collect();
        names
            .into_iter()
            .filter_map(|name| self.role_in(&file.access, name))
            .collect()
    }

    /// Whether `user` may open a session: the role exists and may log in (SQLSTATE 28000
    /// otherwise, in PostgreSQL's words).
    pub fn check_login(&self, user: &str) -> Result<()> {
        match self.role(user) {
            None => Err(Error::InvalidAuthorization(format!(
                "role \"{user}\" does not exist"
            ))),
            Some(role) if !role.login => Err(Error::InvalidAuthorization(format!(
                "role \"{user}\" is not permitted to log in"
            ))),
            Some(_) => Ok(()),
        }
    }

    /// The password verifier of `user`, if the role may log in: one set with SQL, else the
    /// one of `auth.users`.
    pub fn verifier(&self, user: &str) -> Option<Verifier> {
        self.check_login(user).ok()?;
        let file = self.current();
        if let Some(verifier) = file
            .access
            .role(user)
            .and_then(|r| r.password.as_deref())
            .and_then(Verifier::parse)
        {
            return Some(verifier);
        }
        self.users.verifier(user).cloned()
    }

    /// Whether `user` may log in and `password` is theirs.
    pub fn password_matches(&self, user: &str, password: &str) -> bool {
        self.verifier(user)
            .is_some_and(|verifier| verifier.matches(user, password))
    }

    /// Whether `role` passes every check.
    pub fn is_superuser(&self, role: &str) -> bool {
        self.role(role).is_some_and(|r| r.superuser)
    }

    fn is_superuser_in(&self, file: &AccessFile, role: &str) -> bool {
        self.role_in(file, role).is_some_and(|r| r.superuser)
    }

    /// `role` and every role it is a member of, directly or not.
    pub fn memberships(&self, role: &str) -> BTreeSet<String> {
        self.memberships_in(&self.current().access, role)
    }

    fn memberships_in(&self, file: &AccessFile, role: &str) -> BTreeSet<String> {
        let parents: HashMap<&str, &[String]> = file
            .roles
            .iter()
            .map(|r| (r.name.as_str(), r.member_of.as_slice()))
            .collect();
        let mut found = BTreeSet::from([role.to_string()]);
        let mut frontier = vec![role.to_string()];
        for _ in 0..MAX_MEMBERSHIP_DEPTH {
            let mut next = vec![];
            for name in frontier {
                for parent in parents.get(name.as_str()).copied().unwrap_or(&[]) {
                    if found.insert(parent.clone()) {
                        next.push(parent.clone());
                    }
                }
            }
            if next.is_empty() {
                break;
            }
            frontier = next;
        }
        found
    }

    /// The owner of `object` and what is granted on it.
    pub(crate) fn acl(&self, object: &Securable) -> ObjectAcl {
        self.acl_in(&self.current().access, object)
    }

    fn acl_in(&self, file: &AccessFile, object: &Securable) -> ObjectAcl {
        file.acl(object).cloned().unwrap_or_else(|| ObjectAcl {
            object: object.clone(),
            owner: self.bootstrap_superuser().to_string(),
            grants: default_grants(object, self.bootstrap_superuser()),
        })
    }

    /// The privileges `role` has on `object`: all of them as a superuser or a member of its
    /// owner, else what is granted to it, to a role it belongs to, or to PUBLIC.
    pub fn privileges(&self, role: &str, object: &Securable) -> Privileges {
        let published = self.current();
        let file = &published.access;
        if self.role_in(file, role).is_some_and(|r| r.superuser) {
            return object.applicable();
        }
        let acl = self.acl_in(file, object);
        let roles = self.memberships_in(file, role);
        if roles.contains(&acl.owner) {
            return object.applicable();
        }
        acl.grants
            .iter()
            .filter(|item| item.grantee == PUBLIC || roles.contains(&item.grantee))
            .fold(Privileges::NONE, |set, item| set.union(item.privileges))
    }

    /// Whether `role` may act as the owner of `object` (drop it, grant on it).
    pub fn owns(&self, role: &str, object: &Securable) -> bool {
        self.owns_in(&self.current().access, role, object)
    }

    fn owns_in(&self, file: &AccessFile, role: &str, object: &Securable) -> bool {
        self.role_in(file, role).is_some_and(|r| r.superuser)
            || self
                .memberships_in(file, role)
                .contains(&self.acl_in(file, object).owner)
    }

    /// Fails with 42501 unless `role` has `wanted` on `object`.
    pub fn require(&self, role: &str, object: &Securable, wanted: Privileges) -> Result<()> {
        if self.privileges(role, object).contains(wanted) {
            return Ok(());
        }
        Err(denied(object))
    }

    /// Fails with 42501 unless `role` owns `object`.
    pub fn require_owner(&self, role: &str, object: &Securable) -> Result<()> {
        if self.owns(role, object) {
            return Ok(());
        }
        Err(Error::PermissionDenied(format!(
            "must be owner of {}",
            object.describe()
        )))
    }

    /// Fails with 42501 unless `role` is a superuser or a member of `predefined` (PostgreSQL's
    /// `pg_read_server_files`, `pg_write_server_files`).
    pub fn require_server_files(&self, role: &str, predefined: &str, what: &str) -> Result<()> {
        if self.is_superuser(role) || self.memberships(role).contains(predefined) {
            return Ok(());
        }
        Err(Error::PermissionDenied(format!(
            "permission denied to {what}: only superusers and members of {predefined} may"
        )))
    }

    /// Every grant, with the owner's implicit ones first, as `system.table_privileges` and
    /// `information_schema.table_privileges` list them: (object, grantor, grantee, privileges).
    pub(crate) fn grants_of(&self, object: &Securable) -> Vec<(String, String, Privileges)> {
        let acl = self.acl(object);
        let mut rows = vec![(acl.owner.clone(), acl.owner.clone(), object.applicable())];
        for item in acl.grants {
            let grantee = if item.grantee == PUBLIC {
                "PUBLIC".to_string()
            } else {
                item.grantee
            };
            rows.push((item.grantor, grantee, item.privileges));
        }
        rows
    }

    /// The ACL of `object` in PostgreSQL's text form, one item per line
    /// (`alice=r/ember`), as psql's `\dp` shows it.
    pub(crate) fn acl_text(&self, object: &Securable) -> String {
        let acl = self.acl(object);
        let mut items = vec![format!(
            "{}={}/{}",
            acl.owner,
            object.applicable().letters(),
            acl.owner
        )];
        for item in acl.grants {
            items.push(format!(
                "{}={}/{}",
                item.grantee,
                item.privileges.letters(),
                item.grantor
            ));
        }
        items.join("\n")
    }

    /// The number of roles created with SQL (bounded by [`MAX_ROLES`]).
    fn check_role_count(file: &AccessFile) -> Result<()> {
        if file.roles.len() >= MAX_ROLES {
            return Err(Error::LimitExceeded(format!(
                "too many roles: Ember keeps at most {MAX_ROLES}"
            )));
        }
        Ok(())
    }
}

/// PostgreSQL's refusal: "permission denied for table s.t".
fn denied(object: &Securable) -> Error {
    Error::PermissionDenied(format!("permission denied for {}", object.describe()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access() -> AccessControl {
        let mut auth = ember_config::EmberConfig::defaults().auth;
        auth.users = vec![format!(
            "carol:{}",
            crate::users::md5_verifier("carol", "pw")
        )];
        AccessControl::new(&auth).expect("valid configuration")
    }

    fn role(name: &str, member_of: &[&str]) -> RoleEntry {
        RoleEntry {
            name: name.into(),
            superuser: false,
            login: true,
            create_role: false,
            password: None,
            member_of: member_of.iter().map(|s| s.to_string()).collect(),
            created_by: None,
        }
    }

    fn publish(access: &AccessControl, file: AccessFile) {
        access.publish(Published {
            access: file,
            schemas: vec!["s".into()],
            tables: [("s".to_string(), "t".to_string())].into(),
            views: HashMap::new(),
        });
    }

    #[test]
    fn privileges_are_written_as_postgres_acls() {
        let set = Privileges::SELECT.union(Privileges::INSERT);
        assert_eq!(set.letters(), "ar");
        assert_eq!(Privileges::from_letters("arwdD"), Some(Privileges::TABLE));
        assert_eq!(Privileges::from_letters("rz"), None);
        assert_eq!(set.names().collect::<Vec<_>>(), ["INSERT", "SELECT"]);
        assert_eq!(Privileges::named(" select "), Some(Privileges::SELECT));
        let json = serde_json::to_string(&set).unwrap();
        assert_eq!(serde_json::from_str::<Privileges>(&json).unwrap(), set);
        assert!(serde_json::from_str::<Privileges>("\"q\"").is_err());
    }

    #[test]
    fn privileges_come_from_ownership_grants_membership_and_public() {
        let access = access();
        let table = Securable::table("s", "t");
        let mut file = AccessFile {
            roles: vec![
                role("alice", &["analysts"]),
                role("analysts", &["readers"]),
                role("readers", &[]),
                role("bob", &[]),
            ],
            ..Default::default()
        };
        file.created(table.clone(), "bob");
        file.acl_mut(&table, "bob").grants.push(AclItem {
            grantee: "readers".into(),
            privileges: Privileges::SELECT,
            grantor: "bob".into(),
        });
        publish(&access, file.clone());
        // Through two levels of membership.
        assert_eq!(access.privileges("alice", &table), Privileges::SELECT);
        assert!(access.require("alice", &table, Privileges::INSERT).is_err());
        // The owner has everything; the superuser too; others nothing.
        assert_eq!(access.privileges("bob", &table), Privileges::TABLE);
        assert_eq!(access.privileges("ember", &table), Privileges::TABLE);
        assert_eq!(access.privileges("carol", &table), Privileges::NONE);
        assert!(access.owns("bob", &table) && !access.owns("alice", &table));
        // PUBLIC's grants are everyone's.
        file.acl_mut(&table, "bob").grants.push(AclItem {
            grantee: PUBLIC.into(),
            privileges: Privileges::UPDATE,
            grantor: "bob".into(),
        });
        publish(&access, file);
        assert_eq!(access.privileges("carol", &table), Privileges::UPDATE);
        // The default schema is usable by all; other schemas by their owner.
        assert!(
            access
                .privileges("carol", &Securable::schema(DEFAULT_SCHEMA))
                .contains(Privileges::USAGE)
        );
        assert_eq!(
            access.privileges("carol", &Securable::schema("s")),
            Privileges::NONE
        );
        assert_eq!(
            access.acl_text(&table),
            "bob=arwdD/bob\nreaders=r/bob\n=w/bob"
        );
    }

    #[test]
    fn logins_need_an_existing_role_that_may_log_in() {
        let access = access();
        let mut nologin = role("dave", &[]);
        nologin.login = false;
        nologin.password = Some(crate::users::scram_verifier("pw"));
        let file = AccessFile {
            roles: vec![nologin],
            ..Default::default()
        };
        publish(&access, file);
        assert!(access.check_login("ember").is_ok());
        assert!(access.check_login("carol").is_ok());
        assert!(access.password_matches("carol", "pw"));
        assert!(matches!(
            access.check_login("mallory"),
            Err(Error::InvalidAuthorization(_))
        ));
        assert!(matches!(
            access.check_login("dave"),
            Err(Error::InvalidAuthorization(_))
        ));
        assert!(
            !access.password_matches("dave", "pw"),
            "NOLOGIN refuses the right password"
        );
        assert!(access.check_login("pg_read_server_files").is_err());
    }

    #[test]
    fn membership_cycles_end() {
        let access = access();
        // A cycle the statements refuse to make still ends the walk.
        let file = AccessFile {
            roles: vec![role("a", &["b"]), role("b", &["a"])],
            ..Default::default()
        };
        publish(&access, file);
        assert_eq!(access.memberships("a").len(), 2);
    }
}
