//! The world a script's host functions act in: the working directory
//! relative paths resolve against and the environment variables programs
//! and `env` see ([`Surroundings`], the process's own unless the session
//! sets them), and `env.get(name)` / `env.vars()`: those variables,
//! read-only, behind the `env` capability (they often hold secrets).
//! There is no `env.set`: the environment is shared by every runspace of
//! the session, and changing it from one script would leak into the others.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mlua::{Lua, Table};

use super::gate;
use super::HostContext;
use crate::capability::Capability;

/// Where a session's host functions act. A job server sets both to the
/// submitter's, so a job never sees the server's own directory or
/// environment; `None` is the process's own (what `rsp run` wants).
#[derive(Debug, Clone, Default)]
pub(crate) struct Surroundings {
    /// Relative paths (file system, `exec`'s program and `cwd`) resolve against it.
    pub(crate) working_dir: Option<PathBuf>,
    /// Exactly the variables `env` and started programs see.
    pub(crate) environment: Option<BTreeMap<String, String>>,
}

impl Surroundings {
    /// `path` made absolute against the working directory, if the session has one.
    pub(crate) fn absolute<'a>(&self, path: &'a str) -> Cow<'a, str> {
        match &self.working_dir {
            Some(dir) if Path::new(path).is_relative() && !path.is_empty() => {
                Cow::Owned(dir.join(path).to_string_lossy().into_owned())
            }
            _ => Cow::Borrowed(path),
        }
    }

    #[cfg(feature = "exec")]
    /// Gives `command` the session's environment and working directory
    /// (`cwd`, the script's own choice, resolved against the latter).
    pub(crate) fn apply(&self, command: &mut std::process::Command, cwd: Option<&str>) {
        if let Some(vars) = &self.environment {
            command.env_clear().envs(vars);
        }
        match (cwd, &self.working_dir) {
            (Some(cwd), _) => {
                command.current_dir(self.absolute(cwd).as_ref());
            }
            (None, Some(dir)) => {
                command.current_dir(dir);
            }
            (None, None) => {}
        }
    }

    fn var(&self, name: &str) -> Option<Vec<u8>> {
        match &self.environment {
            Some(vars) => vars.get(name).map(|v| v.as_bytes().to_vec()),
            None => std::env::var_os(name).map(|v| v.into_encoded_bytes()),
        }
    }

    fn vars(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        match &self.environment {
            Some(vars) => vars.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())).collect(),
            None => std::env::vars_os().map(|(k, v)| (k.into_encoded_bytes(), v.into_encoded_bytes())).collect(),
        }
    }
}

/// Installs the `env` table.
pub(crate) fn install(lua: &Lua, globals: &Table, ctx: &HostContext) -> mlua::Result<()> {
    let env_table = lua.create_table()?;
    let c = ctx.clone();
    env_table.raw_set(
        "get",
        lua.create_function(move |lua, name: String| {
            gate::require(&c, Capability::Env, "env.get()")?;
            c.surroundings.var(&name).map(|v| lua.create_string(v)).transpose()
        })?,
    )?;
    let c = ctx.clone();
    env_table.raw_set(
        "vars",
        lua.create_function(move |lua, ()| {
            gate::require(&c, Capability::Env, "env.vars()")?;
            let t = lua.create_table()?;
            for (k, v) in c.surroundings.vars() {
                t.raw_set(lua.create_string(k)?, lua.create_string(v)?)?;
            }
            Ok(t)
        })?,
    )?;
    globals.raw_set("env", env_table)
}
