//! Command mode of `rsp run` (`--cmd TEMPLATE`): run an external command
//! per input, GNU parallel style, through the same parallel run as scripts.
//!
//! Each input becomes a JSON value carrying the filled-in command; a
//! built-in Luau script runs it with `exec` (the only capability its
//! session has), emits `{command, exit_code, signal, stdout, stderr}` and
//! fails the item on a non-zero exit, a signal or too much output. So
//! retries, `--halt`, `--timeout` (which kills the command's process
//! group), the job log, `--resume`, batches, progress and the summary are
//! the ones scripts have. Before printing, a record's `input` is put back
//! to what the user gave (a string, or an array of columns).

mod live;
mod sources;
mod template;

use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use regex::Regex;
use runspace::{Capability, Grants, Input, ItemResult, Script, SessionState};
use serde_json::{json, Value};

use crate::common::CliError;
use crate::run::inputs::{InputArgs, Inputs, Records};
use crate::run::output::{Format, Printer};
use crate::run::script::ScriptArgs;
use template::{Filled, Template};

/// Bytes of stdout, and of stderr, one command may write before its item fails.
pub const MAX_OUTPUT: usize = 16 << 20;

/// Options of command mode.
#[derive(clap::Args, Debug, Clone, Default)]
#[command(next_help_heading = "Command mode: a command per input, GNU parallel style")]
pub struct CommandArgs {
    /// Run this command per input instead of a script (GNU parallel's replacement strings:
    /// {} {.} {/} {//} {/.} {#} {%} {1}..{N}; without one, the input is appended).
    #[arg(long = "cmd", value_name = "TEMPLATE", conflicts_with = "code")]
    pub template: Option<String>,

    /// Run the command through `sh -c`, each input single-quoted.
    #[arg(long, requires = "template")]
    pub shell: bool,

    /// Split each input into columns {1}..{N} where this regular expression matches
    /// (GNU parallel's --colsep: e.g. , or '\t' or '\s+').
    #[arg(long, value_name = "REGEX", requires = "template")]
    pub colsep: Option<String>,

    /// Prefix each output line with the input and a TAB (--format values).
    #[arg(long, requires = "template")]
    pub tag: bool,

    /// Print the commands that would run, run nothing.
    #[arg(long, requires = "template")]
    pub dry_run: bool,

    /// Print each command's output lines as they come, each line whole, instead of
    /// each command's output whole when it ends (--format values).
    #[arg(long, requires = "template")]
    pub line_buffer: bool,

    /// Argument lists: `::: VALUE…` and `:::: FILE…` (one value per line);
    /// several combine into every combination, the last varying fastest.
    #[arg(value_name = "::: ARGS", trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    pub sources: Vec<String>,
}

/// A parsed `--cmd`: how to fill in commands and show their records.
pub struct CommandMode {
    template: Template,
    shell: bool,
    colsep: Option<Regex>,
    tag: bool,
    /// `--dry-run`.
    pub dry_run: bool,
    /// `--line-buffer`: output is printed as it comes, by [`live`].
    pub line_buffer: bool,
    /// Set when printing a line failed (the reader went away).
    live_closed: Arc<AtomicBool>,
    sources: Option<Vec<sources::Source>>,
    /// `{%}`: where runspaces claim their slot numbers.
    slots: Option<Slots>,
}

impl CommandMode {
    /// Command mode when `--cmd` is given; `script` holds the script
    /// options, which must be unused (the positional SCRIPT_FILE slot takes
    /// the first `:::` when a template is given).
    pub fn from_args(args: &CommandArgs, script: &ScriptArgs) -> Result<Option<Self>, CliError> {
        let mut words: Vec<String> = script.script.iter().map(|p| p.display().to_string()).collect();
        words.extend(args.sources.iter().cloned());
        let Some(text) = &args.template else {
            // clap's `requires` does not hold these flags back, so here.
            let command_only = [
                ("--shell", args.shell),
                ("--colsep", args.colsep.is_some()),
                ("--tag", args.tag),
                ("--dry-run", args.dry_run),
                ("--line-buffer", args.line_buffer),
            ];
            if let Some((flag, _)) = command_only.iter().find(|(_, given)| *given) {
                return Err(CliError::usage(format!("{flag} is for command mode: give the command with --cmd")));
            }
            if args.sources.is_empty() {
                return Ok(None);
            }
            return Err(CliError::usage("argument lists (::: or ::::) need --cmd"));
        };
        // The runner is ours: nothing a script would be given applies to it.
        let script_options = [
            ("--allow", !script.allow.is_empty()),
            ("--var", !script.vars.is_empty()),
            ("--param", !script.params.is_empty()),
            ("--module", !script.modules.is_empty()),
            ("--memory-limit", script.memory_limit.is_some()),
        ];
        if let Some((flag, _)) = script_options.iter().find(|(_, given)| *given) {
            return Err(CliError::usage(format!(
                "{flag} is for scripts; --cmd runs a command with the exec grant only"
            )));
        }
        let colsep = match args.colsep.as_deref() {
            Some("") => return Err(CliError::usage("--colsep: the separator is empty")),
            Some(pattern) => Some(Regex::new(pattern).map_err(|e| CliError::usage(format!("--colsep: {e}")))?),
            None => None,
        };
        if colsep.as_ref().is_some_and(|re| re.is_match("")) {
            return Err(CliError::usage(
                "--colsep: the pattern matches the empty string, so it cannot separate columns",
            ));
        }
        let template = Template::parse(text).map_err(|e| CliError::usage(format!("--cmd: {e}")))?;
        let slots = template.uses_slot().then(Slots::create).transpose()?;
        let sources = match words.is_empty() {
            true => None,
            false => Some(sources::parse(&words).map_err(CliError::usage)?),
        };
        Ok(Some(CommandMode {
            template,
            shell: args.shell,
            colsep,
            tag: args.tag,
            dry_run: args.dry_run,
            line_buffer: args.line_buffer,
            live_closed: Arc::default(),
            sources,
            slots,
        }))
    }

    /// Whether the inputs come from argument lists (`:::`, `::::`).
    pub fn has_sources(&self) -> bool {
        self.sources.is_some()
    }

    /// The built-in script that runs one filled-in command.
    pub fn script(&self) -> Result<Script, CliError> {
        Script::named("command", self.runner_source()).map_err(CliError::script)
    }

    /// The source of that script (a job sends it to the server).
    pub fn runner_source(&self) -> String {
        RUNNER.replace("MAX_OUTPUT", &MAX_OUTPUT.to_string())
    }

    /// The session: `exec`, nothing else.
    pub fn session(&self) -> Result<SessionState, CliError> {
        let mut grants = Grants::default();
        grants.grant(Capability::Exec);
        // Room for both captured streams at their own cap, so a command
        // past it fails with the runner's message and keeps what it printed.
        let mut session = SessionState::new().grants_from(grants).max_output(2 * MAX_OUTPUT + (1 << 20));
        if self.line_buffer {
            session = session.live_output(live::printer(self.tag, self.live_closed.clone()));
        }
        match &self.slots {
            Some(slots) => slots.add_to(session),
            None => Ok(session),
        }
    }

    /// Whether the template uses `{%}` (a job cannot: its runspaces live on the server).
    pub fn uses_slot(&self) -> bool {
        self.slots.is_some()
    }

    /// The inputs: the argument lists when given, else `args` (stdin,
    /// `--input`, `--range`), each turned into the command to run.
    pub fn inputs(&self, args: &InputArgs) -> Result<Inputs, CliError> {
        // A script runs once on a terminal; a command with no input would run with an empty argument.
        if args.once {
            return Err(CliError::usage("--once is for scripts; --cmd runs a command per input"));
        }
        if self.sources.is_none() && args.reads_stdin() && io::stdin().is_terminal() {
            return Err(CliError::usage(
                "--cmd needs inputs: argument lists (::: VALUES, :::: FILES), --input FILE, --range, or a pipe",
            ));
        }
        // Columns, or an input that could not be read (it stays a failed item).
        type Args = Result<Vec<String>, Input>;
        let (items, total): (Box<dyn Iterator<Item = Args> + Send>, Option<u64>) = match &self.sources {
            Some(sources) => {
                let product = sources::Product::new(sources.clone());
                let total = product.len();
                let colsep = self.colsep.clone();
                let split = move |values: Vec<String>| match &colsep {
                    Some(sep) => values.iter().flat_map(|v| sep.split(v).map(String::from)).collect(),
                    None => values,
                };
                (Box::new(product.map(move |values| Ok(split(values)))), Some(total))
            }
            None => {
                // CSV records are columns {1}..{N}; a header row names them, so it is not an input.
                let inputs = args.open_with(Records::Arrays { header: !args.no_header })?;
                let colsep = self.colsep.clone();
                let columns = inputs.items.map(move |input| match input {
                    Input::Value(v) => Ok(columns(v, colsep.as_ref())),
                    invalid @ Input::Invalid { .. } => Err(invalid),
                });
                (Box::new(columns), inputs.total)
            }
        };
        let (template, shell) = (self.template.clone(), self.shell);
        let mark = self.slots.as_ref().map(|s| s.mark.clone()).unwrap_or_default();
        let items = items.enumerate().map(move |(i, args)| {
            let columns = match args {
                Ok(columns) => columns,
                Err(invalid) => return invalid,
            };
            let filled = template.fill(&columns, i as u64 + 1, shell, &mark);
            let input = match columns.len() {
                1 => json!(columns[0]),
                _ => json!(columns),
            };
            let command = filled.display();
            Input::Value(match filled {
                Filled::Argv(argv) => json!({"input": input, "argv": argv, "command": command}),
                Filled::Shell(line) => json!({"input": input, "line": line, "command": command}),
            })
        });
        Ok(Inputs { items: Box::new(items), total })
    }

    /// `--dry-run`: prints each command, one per line; `{%}` is shown as
    /// GNU parallel shows it, the slots of `jobs` taken in turn.
    pub fn dry_run(&self, inputs: Inputs, jobs: usize, out: &mut impl Write) -> io::Result<()> {
        for (i, input) in inputs.items.enumerate() {
            if let Input::Value(v) = input {
                let command = v.get("command").and_then(Value::as_str).unwrap_or_default();
                match &self.slots {
                    Some(slots) => {
                        let slot = i % jobs.max(1) + 1;
                        writeln!(out, "{}", command.replace(&slots.mark, &slot.to_string()))?
                    }
                    None => writeln!(out, "{command}")?,
                }
            }
        }
        out.flush()
    }

    /// Whether printing a line as it came failed: the run should stop.
    pub fn output_closed(&self) -> bool {
        self.live_closed.load(Ordering::Relaxed)
    }

    /// `--line-buffer` prints lines as they come, so only as text, and in
    /// the order they come.
    pub fn check_view(&self, format: Format, ordered: bool) -> Result<(), CliError> {
        if !self.line_buffer {
            return Ok(());
        }
        if format != Format::Values {
            return Err(CliError::usage(
                "--line-buffer prints the commands' output as text, which only --format values does",
            ));
        }
        if ordered {
            return Err(CliError::usage("--line-buffer prints lines as they come, so it cannot keep -k's order"));
        }
        Ok(())
    }

    /// Prints a finished item: its output as the command wrote it for
    /// `--format values` (already printed with `--line-buffer`), else the
    /// record, its `input` put back.
    pub fn print<W: Write>(&self, printer: &mut Printer<W>, item: &ItemResult) -> io::Result<()> {
        let input = item.input.get("input").unwrap_or(&item.input);
        if printer.format() != Format::Values {
            let mut shown = item.clone();
            shown.input = input.clone();
            return printer.item(&shown);
        }
        let mut err = io::stderr().lock();
        if !self.line_buffer {
            let tag = self.tag.then(|| crate::run::output::bare(input));
            write_tagged(printer.out(), &output_bytes(&item.result, "stdout"), tag.as_deref())?;
            write_tagged(&mut err, &output_bytes(&item.result, "stderr"), tag.as_deref())?;
        }
        if !item.status.is_success() {
            if let Some(error) = item.errors().last() {
                writeln!(err, "rsp: item {} ({}): {error}", item.index, command_text(&item.result))?;
            }
        }
        Ok(())
    }
}

/// The command of a record's result, for messages.
fn command_text(result: &Value) -> &str {
    result.get("command").and_then(Value::as_str).unwrap_or("command")
}

/// A command's output as it wrote it: a string, or the bytes of a
/// `{"$bytes": …}` when it was not UTF-8.
fn output_bytes<'a>(result: &'a Value, key: &str) -> std::borrow::Cow<'a, [u8]> {
    match result.get(key) {
        Some(Value::String(s)) => s.as_bytes().into(),
        Some(other) => runspace::json::as_bytes(other).unwrap_or_default().into(),
        None => Default::default(),
    }
}

/// Writes `text`, each line prefixed with `tag` and a TAB when given.
fn write_tagged(out: &mut impl Write, text: &[u8], tag: Option<&str>) -> io::Result<()> {
    let Some(tag) = tag else { return out.write_all(text) };
    for line in text.split_inclusive(|&b| b == b'\n') {
        write!(out, "{tag}\t")?;
        out.write_all(line)?;
    }
    if !text.is_empty() && !text.ends_with(b"\n") {
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// The columns of an input: split at `colsep`, an array's elements, or the value itself.
fn columns(value: Value, colsep: Option<&Regex>) -> Vec<String> {
    match (value, colsep) {
        (Value::String(s), Some(sep)) => sep.split(&s).map(String::from).collect(),
        (Value::String(s), None) => vec![s],
        (Value::Array(items), _) => items.iter().map(crate::run::output::bare).collect(),
        (other, _) => vec![crate::run::output::bare(&other)],
    }
}

/// `{%}`: the slot of a runspace. GNU parallel's promise is that no two
/// commands running at once share a slot, and that slots run from 1 to the
/// number of jobs. A runspace runs one command at a time, so its slot is
/// claimed once, when it runs its first command, by creating the first
/// free numbered directory in the run's slot directory (`mkdir` is atomic
/// across processes); the module's upvalue keeps it for the runspace's life.
/// A runspace may run several items at once (items are Luau threads), so
/// `rsp run` opens one runspace per item in flight when `{%}` is used.
struct Slots {
    dir: PathBuf,
    /// What `{%}` is filled in as, for the runner to replace.
    mark: String,
}

impl Slots {
    fn create() -> Result<Slots, CliError> {
        let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let dir = std::env::temp_dir().join(format!("rsp-slots-{}-{nonce:x}", std::process::id()));
        std::fs::create_dir(&dir)
            .map_err(|e| CliError::usage(format!("--cmd: cannot make a directory for {{%}} slots: {e}")))?;
        Ok(Slots { dir, mark: format!("rsp.slot.{nonce:x}.") })
    }

    fn add_to(&self, session: SessionState) -> Result<SessionState, CliError> {
        let dir = self.dir.to_string_lossy().into_owned();
        session
            .variable("SLOT_DIR", json!(dir))
            .and_then(|s| s.variable("SLOT_MARK", json!(self.mark)))
            .and_then(|s| s.module("rsp_slot", SLOT_MODULE))
            .map_err(CliError::script)
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The module that claims a runspace's slot; see [`Slots`].
const SLOT_MODULE: &str = r#"
local slot
return function(dir)
    if slot == nil then
        local r = exec("sh", {"-c", 'i=1; while ! mkdir "$0/$i" 2>/dev/null; do i=$((i+1)); ' ..
            '[ "$i" -gt 100000 ] && exit 1; done; printf %s "$i"', dir})
        slot = tonumber(r.stdout)
        if slot == nil then error("cannot claim a slot for {%} in " .. dir, 0) end
    end
    return slot
end
"#;

/// Runs one command, given as `{argv}` or `{line}`; see the module docs.
const RUNNER: &str = r#"
local c = _
local argv, line, command = c.argv, c.line, c.command
if SLOT_MARK then
    local slot = tostring(rsp_slot(SLOT_DIR))
    local function put(s)
        local out, at = {}, 1
        while true do
            local i, j = string.find(s, SLOT_MARK, at, true)
            if not i then break end
            table.insert(out, string.sub(s, at, i - 1))
            table.insert(out, slot)
            at = j + 1
        end
        table.insert(out, string.sub(s, at))
        return table.concat(out)
    end
    if line then line = put(line) end
    if argv then
        local words = {}
        for i, w in ipairs(argv) do words[i] = put(w) end
        argv = words
    end
    command = put(command)
end
local ok, r
-- `live`: with a live-output handler (--line-buffer), lines go out as they come.
if line then
    ok, r = pcall(exec, line, nil, {shell = true, max_output = MAX_OUTPUT + 1, live = c.input})
else
    local args = {}
    for i = 2, #argv do args[i - 1] = argv[i] end
    ok, r = pcall(exec, argv[1], #args > 0 and args or nil, {max_output = MAX_OUTPUT + 1, live = c.input})
end
if not ok then
    -- Cannot start (no such program), or stopped: say so without the runner's line numbers.
    local message = string.gsub(tostring(r), "^.-exec: ", "")
    error(message, 0)
end
emit({command = command, exit_code = r.code or json.null, signal = r.signal or json.null,
      stdout = string.sub(r.stdout, 1, MAX_OUTPUT), stderr = string.sub(r.stderr, 1, MAX_OUTPUT)})
local function tail(s)
    local lines = {}
    for line in string.gmatch(string.sub(s, -4000), "[^\n]+") do
        table.insert(lines, line)
        if #lines > 5 then table.remove(lines, 1) end
    end
    if #lines == 0 then return "" end
    return ": " .. table.concat(lines, " | ")
end
if #r.stdout > MAX_OUTPUT or #r.stderr > MAX_OUTPUT then
    error("output exceeds MAX_OUTPUT bytes per stream (kept the first MAX_OUTPUT)", 0)
elseif r.signal then
    error("killed by signal " .. r.signal .. tail(r.stderr), 0)
elseif r.code ~= 0 then
    error("exit code " .. r.code .. tail(r.stderr), 0)
end
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_come_from_separators_and_arrays() {
        let comma = Regex::new(",").unwrap();
        assert_eq!(columns(json!("a,b,,c"), Some(&comma)), ["a", "b", "", "c"]);
        assert_eq!(columns(json!("a,b"), None), ["a,b"]);
        assert_eq!(columns(json!([1, "x", null]), None), ["1", "x", ""]);
        assert_eq!(columns(json!(5), Some(&comma)), ["5"]);
        // A regular expression, as GNU parallel's --colsep.
        let spaces = Regex::new(r"\s+").unwrap();
        assert_eq!(columns(json!("a  b\tc"), Some(&spaces)), ["a", "b", "c"]);
    }

    #[test]
    fn tags_prefix_every_line() {
        let mut out = Vec::new();
        write_tagged(&mut out, b"a\nb", Some("in")).unwrap();
        assert_eq!(out, b"in\ta\nin\tb\n");
        let mut out = Vec::new();
        write_tagged(&mut out, b"", Some("in")).unwrap();
        assert!(out.is_empty());
        // Output that is not UTF-8 is printed as it was written.
        let result = json!({"stdout": {"$bytes": "/3gK"}, "stderr": "e"});
        assert_eq!(&*output_bytes(&result, "stdout"), b"\xffx\n");
        assert_eq!(&*output_bytes(&result, "stderr"), b"e");
    }
}
