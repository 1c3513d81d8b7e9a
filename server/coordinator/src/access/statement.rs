//! The statements of access control, typed from their syntax trees: `CREATE ROLE`/`USER`,
//! `ALTER ROLE`/`USER`, `DROP ROLE`/`USER`, `GRANT`/`REVOKE` of privileges and of role
//! membership, `SET ROLE`/`RESET ROLE`. They are parsed in PostgreSQL's grammar whatever the
//! session's dialect (`statement::parse_statements` sees to that), and run here against the
//! catalog.

use datafusion::sql::sqlparser::ast::{
    Action, AlterRoleOperation, CreateRole, Expr as SqlExpr, GrantObjects, Grantee, GranteeName,
    GranteesType, Ident, ObjectName, ObjectType, Password, Privileges as SqlPrivileges, RoleOption,
    Set, Statement as SqlStatement, Value,
};

use super::{AccessControl, AccessFile, PUBLIC, Privileges, RoleEntry, Securable};
use crate::error::{Error, Result};
use crate::users::{Method, md5_verifier, scram_verifier};

/// A statement about roles or privileges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessStatement {
    /// `CREATE ROLE name [WITH] options` (`CREATE USER` implies `LOGIN`).
    CreateRole {
        /// The new role.
        name: String,
        /// `IF NOT EXISTS`.
        if_not_exists: bool,
        /// Its attributes.
        options: RoleOptions,
        /// `IN ROLE`: roles it becomes a member of.
        member_of: Vec<String>,
        /// `ROLE`/`USER`: roles that become its members.
        members: Vec<String>,
    },
    /// `ALTER ROLE name [WITH] options`.
    AlterRole {
        /// The role.
        name: String,
        /// The attributes that change.
        options: RoleOptions,
    },
    /// `DROP ROLE [IF EXISTS] name, ...`.
    DropRole {
        /// The roles.
        names: Vec<String>,
        /// `IF EXISTS`.
        if_exists: bool,
    },
    /// `GRANT privileges ON objects TO grantees`.
    Grant {
        /// The privileges; `ALL` is every privilege the objects have.
        privileges: Option<Privileges>,
        /// The objects.
        objects: GrantTarget,
        /// The roles (PUBLIC is the empty name).
        grantees: Vec<String>,
    },
    /// `REVOKE privileges ON objects FROM grantees`.
    Revoke {
        /// The privileges; `ALL` is every privilege.
        privileges: Option<Privileges>,
        /// The objects.
        objects: GrantTarget,
        /// The roles (PUBLIC is the empty name).
        grantees: Vec<String>,
    },
    /// `GRANT role, ... TO member, ...`.
    GrantRole {
        /// The roles granted.
        roles: Vec<String>,
        /// Who becomes their member.
        members: Vec<String>,
    },
    /// `REVOKE role, ... FROM member, ...`.
    RevokeRole {
        /// The roles revoked.
        roles: Vec<String>,
        /// Who stops being their member.
        members: Vec<String>,
    },
    /// `SET ROLE name` (`None`: `SET ROLE NONE`, `RESET ROLE`).
    SetRole(Option<String>),
}

/// Role attributes a statement sets (`None`: left as they are, or the default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoleOptions {
    /// `SUPERUSER` / `NOSUPERUSER`.
    pub superuser: Option<bool>,
    /// `LOGIN` / `NOLOGIN`.
    pub login: Option<bool>,
    /// `CREATEROLE` / `NOCREATEROLE`.
    pub create_role: Option<bool>,
    /// `PASSWORD 'text'` (`Some(None)`: `PASSWORD NULL`).
    pub password: Option<Option<String>>,
}

/// What a `GRANT` or `REVOKE` of privileges names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantTarget {
    /// `ON [TABLE] t, ...` (tables and views).
    Tables(Vec<ObjectName>),
    /// `ON ALL TABLES IN SCHEMA s, ...`.
    AllTablesInSchema(Vec<String>),
    /// `ON SCHEMA s, ...`.
    Schemas(Vec<String>),
    /// `ON DATABASE name`.
    Database,
}

/// A role name as PostgreSQL reads it: unquoted names fold to lower case.
pub(crate) fn role_name(ident: &Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_lowercase()
    }
}

fn single_name(name: &ObjectName) -> Result<String> {
    match name.0.as_slice() {
        [part] => part
            .as_ident()
            .map(role_name)
            .ok_or_else(|| Error::Syntax(format!("invalid role name {name}"))),
        _ => Err(Error::Syntax(format!("invalid role name {name}"))),
    }
}

fn grantee_name(grantee: &Grantee) -> Result<String> {
    match (&grantee.grantee_type, &grantee.name) {
        (GranteesType::Public, _) => Ok(PUBLIC.to_string()),
        (
            GranteesType::None | GranteesType::Role | GranteesType::User | GranteesType::Group,
            Some(GranteeName::ObjectName(name)),
        ) => {
            let name = single_name(name)?;
            // `TO public` written as a name is PUBLIC too.
            Ok(if name == "public" {
                PUBLIC.to_string()
            } else {
                name
            })
        }
        _ => Err(Error::NotSupported(format!(
            "grantee {grantee} is not supported: name a role or PUBLIC"
        ))),
    }
}

fn not_supported(what: &str) -> Error {
    Error::NotSupported(format!("{what} is not supported"))
}

fn role_options(options: &[RoleOption]) -> Result<RoleOptions> {
    let mut parsed = RoleOptions::default();
    for option in options {
        match option {
            RoleOption::SuperUser(on) => parsed.superuser = Some(*on),
            RoleOption::Login(on) => parsed.login = Some(*on),
            RoleOption::CreateRole(on) => parsed.create_role = Some(*on),
            RoleOption::Password(password) => parsed.password = Some(password_text(password)?),
            RoleOption::Inherit(true) => {}
            RoleOption::Inherit(false) => return Err(not_supported("NOINHERIT")),
            RoleOption::CreateDB(_) => {
                return Err(not_supported(
                    "CREATEDB (Ember has one database; GRANT CREATE ON DATABASE lets a role create schemas)",
                ));
            }
            RoleOption::BypassRLS(_) => return Err(not_supported("BYPASSRLS")),
            RoleOption::Replication(_) => return Err(not_supported("REPLICATION")),
            RoleOption::ConnectionLimit(_) => {
                return Err(not_supported(
                    "CONNECTION LIMIT (coordinator.max_sessions_per_user caps every role)",
                ));
            }
            RoleOption::ValidUntil(_) => return Err(not_supported("VALID UNTIL")),
        }
    }
    Ok(parsed)
}

fn password_text(password: &Password) -> Result<Option<String>> {
    match password {
        Password::NullPassword => Ok(None),
        Password::Password(SqlExpr::Value(value)) => match &value.value {
            Value::SingleQuotedString(text) | Value::EscapedStringLiteral(text) => {
                Ok(Some(text.clone()))
            }
            _ => Err(Error::Syntax("PASSWORD takes a string".into())),
        },
        Password::Password(_) => Err(Error::Syntax("PASSWORD takes a string".into())),
    }
}

fn privileges(privileges: &SqlPrivileges) -> Result<Option<Privileges>> {
    let actions = match privileges {
        SqlPrivileges::All { .. } => return Ok(None),
        SqlPrivileges::Actions(actions) => actions,
    };
    let mut set = Privileges::NONE;
    for action in actions {
        let privilege = match action {
            Action::Select { columns: None } => Privileges::SELECT,
            Action::Insert { columns: None } => Privileges::INSERT,
            Action::Update { columns: None } => Privileges::UPDATE,
            Action::Delete => Privileges::DELETE,
            Action::Truncate => Privileges::TRUNCATE,
            Action::Usage => Privileges::USAGE,
            Action::Create { obj_type: None } => Privileges::CREATE,
            Action::Select { .. } | Action::Insert { .. } | Action::Update { .. } => {
                return Err(not_supported("column privileges"));
            }
            other => return Err(not_supported(&format!("privilege {other}"))),
        };
        set = set.union(privilege);
    }
    Ok(Some(set))
}

fn target(objects: &GrantObjects) -> Result<GrantTarget> {
    let names = |names: &[ObjectName]| -> Result<Vec<String>> {
        names
            .iter()
            .map(|name| match name.0.as_slice() {
                [part] => part
                    .as_ident()
                    .map(|i| {
                        if i.quote_style.is_some() {
                            i.value.clone()
                        } else {
                            i.value.to_lowercase()
                        }
                    })
                    .ok_or_else(|| Error::Syntax(format!("invalid schema name {name}"))),
                _ => Err(Error::Syntax(format!("invalid schema name {name}"))),
            })
            .collect()
    };
    Ok(match objects {
        GrantObjects::Tables(tables) => GrantTarget::Tables(tables.clone()),
        GrantObjects::AllTablesInSchema { schemas } => {
            GrantTarget::AllTablesInSchema(names(schemas)?)
        }
        GrantObjects::Schemas(schemas) => GrantTarget::Schemas(names(schemas)?),
        GrantObjects::Databases(_) => GrantTarget::Database,
        other => return Err(not_supported(&format!("GRANT ON {other}"))),
    })
}

impl AccessStatement {
    /// The access statement `statement` is, if it is one.
    pub(crate) fn recognise(statement: &SqlStatement) -> Result<Option<Self>> {
        Ok(Some(match statement {
            SqlStatement::CreateRole(create) => Self::create_role(create)?,
            SqlStatement::AlterRole { name, operation } => match operation {
                AlterRoleOperation::WithOptions { options } => AccessStatement::AlterRole {
                    name: role_name(name),
                    options: role_options(options)?,
                },
                AlterRoleOperation::AddMember { member_name } => AccessStatement::GrantRole {
                    roles: vec![role_name(name)],
                    members: vec![role_name(member_name)],
                },
                AlterRoleOperation::DropMember { member_name } => AccessStatement::RevokeRole {
                    roles: vec![role_name(name)],
                    members: vec![role_name(member_name)],
                },
                AlterRoleOperation::RenameRole { .. } => {
                    return Err(not_supported("ALTER ROLE ... RENAME TO"));
                }
                _ => return Err(not_supported("ALTER ROLE ... SET")),
            },
            SqlStatement::Drop {
                object_type: ObjectType::Role | ObjectType::User,
                if_exists,
                names,
                ..
            } => AccessStatement::DropRole {
                names: names.iter().map(single_name).collect::<Result<_>>()?,
                if_exists: *if_exists,
            },
            SqlStatement::Grant(grant) => {
                if grant.with_grant_option {
                    return Err(not_supported("WITH GRANT OPTION"));
                }
                let grantees = grant
                    .grantees
                    .iter()
                    .map(grantee_name)
                    .collect::<Result<Vec<_>>>()?;
                match &grant.objects {
                    None => AccessStatement::GrantRole {
                        roles: granted_roles(&grant.privileges)?,
                        members: members(grantees)?,
                    },
                    Some(objects) => AccessStatement::Grant {
                        privileges: privileges(&grant.privileges)?,
                        objects: target(objects)?,
                        grantees,
                    },
                }
            }
            SqlStatement::Revoke(revoke) => {
                let grantees = revoke
                    .grantees
                    .iter()
                    .map(grantee_name)
                    .collect::<Result<Vec<_>>>()?;
                match &revoke.objects {
                    None => AccessStatement::RevokeRole {
                        roles: granted_roles(&revoke.privileges)?,
                        members: members(grantees)?,
                    },
                    Some(objects) => AccessStatement::Revoke {
                        privileges: privileges(&revoke.privileges)?,
                        objects: target(objects)?,
                        grantees,
                    },
                }
            }
            SqlStatement::Set(Set::SetRole {
                context_modifier: _,
                role_name: role,
            }) => AccessStatement::SetRole(role.as_ref().map(role_name)),
            _ => return Ok(None),
        }))
    }

    fn create_role(create: &CreateRole) -> Result<Self> {
        let [name] = create.names.as_slice() else {
            return Err(Error::Syntax("CREATE ROLE creates one role".into()));
        };
        if create.connection_limit.is_some() {
            return Err(not_supported("CONNECTION LIMIT"));
        }
        if create.valid_until.is_some() {
            return Err(not_supported("VALID UNTIL"));
        }
        if create.create_db.is_some() {
            return Err(not_supported(
                "CREATEDB (Ember has one database; GRANT CREATE ON DATABASE lets a role create schemas)",
            ));
        }
        if create.bypassrls.is_some() || create.replication.is_some() {
            return Err(not_supported("BYPASSRLS and REPLICATION"));
        }
        if create.inherit == Some(false) {
            return Err(not_supported("NOINHERIT"));
        }
        if !create.admin.is_empty() || create.authorization_owner.is_some() {
            return Err(not_supported("ADMIN and AUTHORIZATION"));
        }
        let names = |idents: &[Ident]| idents.iter().map(role_name).collect::<Vec<_>>();
        Ok(AccessStatement::CreateRole {
            name: single_name(name)?,
            if_not_exists: create.if_not_exists,
            options: RoleOptions {
                superuser: create.superuser,
                login: create.login,
                create_role: create.create_role,
                password: create.password.as_ref().map(password_text).transpose()?,
            },
            member_of: names(&create.in_role)
                .into_iter()
                .chain(names(&create.in_group))
                .collect(),
            members: names(&create.role)
                .into_iter()
                .chain(names(&create.user))
                .collect(),
        })
    }

    /// Runs the statement for `role` (the session's current role). `SET ROLE` is the session's
    /// own business and is not run here.
    pub(crate) fn apply(
        &self,
        access: &AccessControl,
        file: &mut AccessFile,
        role: &str,
        resolve_table: &dyn Fn(&ObjectName) -> Result<(String, String)>,
        tables_in: &dyn Fn(&str) -> Result<Vec<String>>,
    ) -> Result<()> {
        match self {
            AccessStatement::CreateRole {
                name,
                if_not_exists,
                options,
                member_of,
                members,
            } => {
                check_role_name(name)?;
                if access.role_in(file, name).is_some() {
                    if *if_not_exists {
                        return Ok(());
                    }
                    return Err(Error::DuplicateObject(format!(
                        "role \"{name}\" already exists"
                    )));
                }
                may_manage_roles(access, file, role, options.superuser == Some(true))?;
                AccessControl::check_role_count(file)?;
                let password = hash_password(access.method(), name, options.password.clone());
                file.roles.push(RoleEntry {
                    name: name.clone(),
                    superuser: options.superuser.unwrap_or(false),
                    login: options.login.unwrap_or(false),
                    create_role: options.create_role.unwrap_or(false),
                    password: password.flatten(),
                    member_of: vec![],
                    created_by: Some(role.to_string()),
                });
                for parent in member_of {
                    may_administer(access, file, role, parent)?;
                    add_member(access, file, parent, name)?;
                }
                for member in members {
                    add_member(access, file, name, member)?;
                }
                Ok(())
            }
            AccessStatement::AlterRole { name, options } => {
                let Some(existing) = access.role_in(file, name) else {
                    return Err(undefined_role(name));
                };
                let only_own_password = name == role
                    && options.superuser.is_none()
                    && options.login.is_none()
                    && options.create_role.is_none();
                if !only_own_password {
                    may_administer(access, file, role, name)?;
                    if options.superuser.is_some() && !access.is_superuser_in(file, role) {
                        return Err(Error::PermissionDenied(
                            "permission denied: only superusers may grant or take SUPERUSER".into(),
                        ));
                    }
                }
                if existing.configured
                    && access.superusers.iter().any(|s| s == name)
                    && (options.superuser == Some(false) || options.login == Some(false))
                {
                    return Err(Error::PermissionDenied(format!(
                        "role \"{name}\" is a superuser by configuration (auth.superusers)"
                    )));
                }
                let password = hash_password(access.method(), name, options.password.clone());
                if file.role(name).is_none() {
                    // A configured role gets an entry for what SQL changes of it.
                    file.roles.push(RoleEntry {
                        name: name.clone(),
                        superuser: existing.superuser,
                        login: existing.login,
                        create_role: existing.create_role,
                        password: None,
                        member_of: vec![],
                        created_by: None,
                    });
                }
                let entry = file.role_mut(name).ok_or_else(|| undefined_role(name))?;
                if let Some(on) = options.superuser {
                    entry.superuser = on;
                }
                if let Some(on) = options.login {
                    entry.login = on;
                }
                if let Some(on) = options.create_role {
                    entry.create_role = on;
                }
                if let Some(password) = password {
                    entry.password = password;
                }
                Ok(())
            }
            AccessStatement::DropRole { names, if_exists } => {
                for name in names {
                    let Some(existing) = access.role_in(file, name) else {
                        if *if_exists {
                            continue;
                        }
                        return Err(undefined_role(name));
                    };
                    if existing.configured {
                        return Err(Error::PermissionDenied(format!(
                            "role \"{name}\" comes from the configuration (auth.superusers or auth.users) and cannot be dropped"
                        )));
                    }
                    if name == role {
                        return Err(Error::PermissionDenied(
                            "current user cannot be dropped".into(),
                        ));
                    }
                    may_administer(access, file, role, name)?;
                    if let Some(owned) = file.objects.iter().find(|o| o.owner == *name) {
                        return Err(Error::DependentObjects(format!(
                            "role \"{name}\" cannot be dropped because it owns {}",
                            owned.object.describe()
                        )));
                    }
                    file.roles.retain(|r| r.name != *name);
                    for other in &mut file.roles {
                        other.member_of.retain(|r| r != name);
                    }
                    for object in &mut file.objects {
                        object.grants.retain(|g| g.grantee != *name);
                    }
                }
                Ok(())
            }
            AccessStatement::GrantRole { roles, members } => {
                for granted in dedup(roles) {
                    may_administer(access, file, role, granted)?;
                    for member in dedup(members) {
                        add_member(access, file, granted, member)?;
                    }
                }
                Ok(())
            }
            AccessStatement::RevokeRole { roles, members } => {
                for granted in dedup(roles) {
                    if access.role_in(file, granted).is_none() {
                        return Err(undefined_role(granted));
                    }
                    may_administer(access, file, role, granted)?;
                    for member in members {
                        if let Some(entry) = file.role_mut(member) {
                            entry.member_of.retain(|r| r != granted);
                        }
                    }
                }
                Ok(())
            }
            AccessStatement::Grant {
                privileges,
                objects,
                grantees,
            }
            | AccessStatement::Revoke {
                privileges,
                objects,
                grantees,
            } => {
                let grant = matches!(self, AccessStatement::Grant { .. });
                let grantees = dedup(grantees);
                for grantee in &grantees {
                    if *grantee != PUBLIC && access.role_in(file, grantee).is_none() {
                        return Err(undefined_role(grantee));
                    }
                }
                for object in securables(objects, resolve_table, tables_in)? {
                    let applicable = object.applicable();
                    let wanted = privileges.unwrap_or(applicable);
                    if !applicable.contains(wanted) {
                        let names: Vec<_> = wanted.without(applicable).names().collect();
                        return Err(Error::InvalidGrant(format!(
                            "invalid privilege type {} for {}",
                            names.join(", "),
                            object.describe()
                        )));
                    }
                    if !access.owns_in(file, role, &object) {
                        return Err(Error::PermissionDenied(format!(
                            "permission denied for {} (only its owner, a member of the owner's role, or a superuser may grant on it)",
                            object.describe()
                        )));
                    }
                    let owner = access.acl_in(file, &object).owner;
                    let acl = file.acl_mut(&object, &owner);
                    for grantee in &grantees {
                        if grant {
                            match acl.grants.iter_mut().find(|g| g.grantee == **grantee) {
                                Some(item) => item.privileges = item.privileges.union(wanted),
                                None => acl.grants.push(super::AclItem {
                                    grantee: (*grantee).clone(),
                                    privileges: wanted,
                                    grantor: owner.clone(),
                                }),
                            }
                        } else {
                            for item in acl.grants.iter_mut().filter(|g| g.grantee == **grantee) {
                                item.privileges = item.privileges.without(wanted);
                            }
                            acl.grants.retain(|g| !g.privileges.is_empty());
                        }
                    }
                }
                Ok(())
            }
            AccessStatement::SetRole(_) => Ok(()),
        }
    }
}

/// The roles of `GRANT role, ... TO ...` (parsed as `ROLE` actions).
fn granted_roles(privileges: &SqlPrivileges) -> Result<Vec<String>> {
    let SqlPrivileges::Actions(actions) = privileges else {
        return Err(Error::Syntax("GRANT ALL needs ON objects".into()));
    };
    actions
        .iter()
        .map(|action| match action {
            Action::Role { role } => single_name(role),
            other => Err(Error::Syntax(format!("{other} needs ON objects"))),
        })
        .collect()
}

fn members(grantees: Vec<String>) -> Result<Vec<String>> {
    if grantees.iter().any(|g| g == PUBLIC) {
        return Err(Error::Syntax("a role cannot be granted to PUBLIC".into()));
    }
    Ok(grantees)
}

fn undefined_role(name: &str) -> Error {
    Error::UndefinedObject(format!("role \"{name}\" does not exist"))
}

fn check_role_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 63 {
        return Err(Error::Syntax(format!(
            "role names have 1 to 63 bytes: \"{name}\""
        )));
    }
    if name == "public" || name == "none" || name.starts_with("pg_") {
        return Err(Error::ReservedName(format!(
            "role name \"{name}\" is reserved"
        )));
    }
    Ok(())
}

/// Whether `actor` may administer `target` (alter it, drop it, grant or revoke membership in
/// it): a superuser may administer any role; a role with CREATEROLE the roles it created that
/// are not superusers (PostgreSQL 16's rule). Predefined and configured roles are the
/// superusers' alone.
fn may_administer(
    access: &AccessControl,
    file: &AccessFile,
    actor: &str,
    target: &str,
) -> Result<()> {
    if access.role_in(file, target).is_none() {
        return Err(undefined_role(target));
    }
    if access.is_superuser_in(file, actor) {
        return Ok(());
    }
    let creator = access.role_in(file, actor).is_some_and(|me| me.create_role)
        && file
            .role(target)
            .is_some_and(|r| !r.superuser && r.created_by.as_deref() == Some(actor));
    if creator {
        return Ok(());
    }
    Err(Error::PermissionDenied(format!(
        "permission denied to administer role \"{target}\": only superusers, and the role with CREATEROLE that created it, may"
    )))
}

/// Removes repeats, keeping the first of each.
fn dedup(names: &[String]) -> Vec<&String> {
    let mut seen = std::collections::HashSet::new();
    names.iter().filter(|n| seen.insert(n.as_str())).collect()
}

/// Only superusers create superusers; roles with CREATEROLE create the others.
fn may_manage_roles(
    access: &AccessControl,
    file: &AccessFile,
    role: &str,
    superuser_target: bool,
) -> Result<()> {
    let me = access.role_in(file, role);
    let allowed = match &me {
        Some(me) if me.superuser => true,
        Some(me) => me.create_role && !superuser_target,
        None => false,
    };
    if allowed {
        Ok(())
    } else if superuser_target {
        Err(Error::PermissionDenied(
            "permission denied: only superusers may create, alter or grant superuser roles".into(),
        ))
    } else {
        Err(Error::PermissionDenied(
            "permission denied to manage roles: only superusers and roles with CREATEROLE may"
                .into(),
        ))
    }
}

/// Makes `member` a member of `parent`, refusing cycles.
fn add_member(
    access: &AccessControl,
    file: &mut AccessFile,
    parent: &str,
    member: &str,
) -> Result<()> {
    let predefined = parent == "pg_read_server_files" || parent == "pg_write_server_files";
    if !predefined && access.role_in(file, parent).is_none() {
        return Err(undefined_role(parent));
    }
    let Some(existing) = access.role_in(file, member) else {
        return Err(undefined_role(member));
    };
    if parent == member || access.memberships_in(file, parent).contains(member) {
        return Err(Error::InvalidGrant(format!(
            "role \"{member}\" is a member of role \"{parent}\" already, or would be of itself"
        )));
    }
    if file.role(member).is_none() {
        AccessControl::check_role_count(file)?;
        file.roles.push(RoleEntry {
            name: member.to_string(),
            superuser: false,
            login: existing.login,
            create_role: false,
            password: None,
            member_of: vec![],
            created_by: None,
        });
    }
    let entry = file
        .role_mut(member)
        .ok_or_else(|| undefined_role(member))?;
    if !entry.member_of.iter().any(|p| p == parent) {
        if entry.member_of.len() >= 256 {
            return Err(Error::LimitExceeded(format!(
                "role \"{member}\" is a member of too many roles (at most 256)"
            )));
        }
        entry.member_of.push(parent.to_string());
    }
    Ok(())
}

/// The verifier of a password given in SQL: kept as it is when it is a verifier already (as
/// PostgreSQL does), else made in the form `auth.method` checks.
fn hash_password(
    method: Method,
    user: &str,
    password: Option<Option<String>>,
) -> Option<Option<String>> {
    password.map(|password| {
        password.map(|text| {
            if crate::users::Verifier::parse(&text).is_some() {
                text
            } else if method == Method::Md5 {
                md5_verifier(user, &text)
            } else {
                scram_verifier(&text)
            }
        })
    })
}

/// The objects a grant names, each once.
fn securables(
    objects: &GrantTarget,
    resolve_table: &dyn Fn(&ObjectName) -> Result<(String, String)>,
    tables_in: &dyn Fn(&str) -> Result<Vec<String>>,
) -> Result<Vec<Securable>> {
    let objects = match objects {
        GrantTarget::Schemas(schemas) => {
            GrantTarget::Schemas(dedup(schemas).into_iter().cloned().collect())
        }
        GrantTarget::AllTablesInSchema(schemas) => {
            GrantTarget::AllTablesInSchema(dedup(schemas).into_iter().cloned().collect())
        }
        other => other.clone(),
    };
    let mut seen = std::collections::HashSet::new();
    let all = match &objects {
        GrantTarget::Database => vec![Securable::Database],
        GrantTarget::Schemas(schemas) => {
            for schema in schemas {
                tables_in(schema)?;
            }
            schemas.iter().map(|s| Securable::schema(s)).collect()
        }
        GrantTarget::Tables(tables) => tables
            .iter()
            .map(|t| resolve_table(t).map(|(schema, name)| Securable::table(&schema, &name)))
            .collect::<Result<_>>()?,
        GrantTarget::AllTablesInSchema(schemas) => {
            let mut all = vec![];
            for schema in schemas {
                all.extend(
                    tables_in(schema)?
                        .into_iter()
                        .map(|name| Securable::table(schema, &name)),
                );
            }
            all
        }
    };
    Ok(all.into_iter().filter(|o| seen.insert(o.clone())).collect())
}
