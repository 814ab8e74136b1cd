//! Dockerfile parsing for the builder: logical lines (comments dropped, `\` continuations
//! joined), one [`Instruction`] per line, words split the way Docker's shell lexer does
//! (quotes removed, `$VAR`/`${VAR}`/`${VAR:-default}` expanded where Docker expands them).

use std::collections::BTreeMap;

/// A parse error, naming the Dockerfile line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Dockerfile line {line}: {reason}")]
pub struct ParseError {
    pub line: usize,
    pub reason: String,
}

/// How a command is given: `["exe", "arg"]` or a shell string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandForm {
    Exec(Vec<String>),
    Shell(String),
}

impl CommandForm {
    /// The argv Docker stores in the image config (`/bin/sh -c` for the shell form).
    pub fn argv(&self) -> Vec<String> {
        match self {
            CommandForm::Exec(args) => args.clone(),
            CommandForm::Shell(s) => vec!["/bin/sh".into(), "-c".into(), s.clone()],
        }
    }
}

/// `COPY`/`ADD` arguments (sources relative to the build context).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyArgs {
    pub sources: Vec<String>,
    pub dest: String,
    /// `--chown=user[:group]`
    pub chown: Option<String>,
    /// `--chmod=<octal>`
    pub chmod: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instruction {
    From {
        image: String,
    },
    Run(CommandForm),
    Copy(CopyArgs),
    Add(CopyArgs),
    /// `ENV`/`LABEL`/`ARG` pairs keep their raw (unexpanded) values; see [`expand`].
    Env(Vec<(String, String)>),
    Label(Vec<(String, String)>),
    Arg {
        name: String,
        default: Option<String>,
    },
    Workdir(String),
    User(String),
    Expose(Vec<String>),
    Entrypoint(CommandForm),
    Cmd(CommandForm),
}

/// One instruction and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// 1-based line of the instruction's first line.
    pub line: usize,
    /// The logical line as written (for logs and cache keys).
    pub text: String,
    pub instruction: Instruction,
}

/// Parses a whole Dockerfile. Only single-stage files are accepted: the first instruction
/// (after `ARG`s) must be `FROM`, and there is exactly one `FROM`.
pub fn parse(dockerfile: &str) -> Result<Vec<Step>, ParseError> {
    let mut steps = Vec::new();
    let mut from_seen = false;
    for (line, text) in logical_lines(dockerfile) {
        let err = |reason: String| ParseError { line, reason };
        let (keyword, rest) = match text.split_once(char::is_whitespace) {
            Some((k, r)) => (k, r.trim()),
            None => (text.as_str(), ""),
        };
        let keyword = keyword.to_ascii_uppercase();
        if rest.is_empty() {
            return Err(err(format!("{keyword} needs arguments")));
        }
        let instruction = match keyword.as_str() {
            "FROM" => {
                if from_seen {
                    return Err(err(
                        "multi-stage builds (a second FROM) are not supported".into()
                    ));
                }
                from_seen = true;
                let words = words(rest).map_err(err)?;
                match words.as_slice() {
                    [image] => Instruction::From {
                        image: image.clone(),
                    },
                    [image, as_, _name] if as_.eq_ignore_ascii_case("as") => Instruction::From {
                        image: image.clone(),
                    },
                    _ if words.iter().any(|w| w.starts_with("--")) => {
                        return Err(err(format!("FROM flags are not supported: {rest}")));
                    }
                    _ => return Err(err(format!("FROM takes one image, got {rest:?}"))),
                }
            }
            "ARG" => {
                let (name, default) = match rest.split_once('=') {
                    Some((n, d)) => (n.trim().to_owned(), Some(unquote(d).map_err(err)?)),
                    None => (rest.to_owned(), None),
                };
                if !is_name(&name) {
                    return Err(err(format!("ARG: {name:?} is not a variable name")));
                }
                Instruction::Arg { name, default }
            }
            _ if !from_seen => return Err(err(format!("{keyword} before FROM"))),
            "RUN" => Instruction::Run(command_form(rest).map_err(err)?),
            "ENTRYPOINT" => Instruction::Entrypoint(command_form(rest).map_err(err)?),
            "CMD" => Instruction::Cmd(command_form(rest).map_err(err)?),
            "COPY" => Instruction::Copy(copy_args(rest, "COPY").map_err(err)?),
            "ADD" => Instruction::Add(copy_args(rest, "ADD").map_err(err)?),
            "ENV" => Instruction::Env(pairs(rest, "ENV").map_err(err)?),
            "LABEL" => Instruction::Label(pairs(rest, "LABEL").map_err(err)?),
            "WORKDIR" => Instruction::Workdir(rest.to_owned()),
            "USER" => Instruction::User(rest.to_owned()),
            "EXPOSE" => Instruction::Expose(rest.split_whitespace().map(str::to_owned).collect()),
            "SHELL" | "VOLUME" | "HEALTHCHECK" | "STOPSIGNAL" | "ONBUILD" | "MAINTAINER" => {
                return Err(err(format!("{keyword} is not supported by this builder")));
            }
            _ => return Err(err(format!("unknown instruction {keyword}"))),
        };
        steps.push(Step {
            line,
            text,
            instruction,
        });
    }
    if !from_seen {
        return Err(ParseError {
            line: 1,
            reason: "no FROM instruction".into(),
        });
    }
    Ok(steps)
}

/// Logical lines with their first physical line number: comments and blank lines dropped,
/// lines ending in `\` joined with the next.
fn logical_lines(dockerfile: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, raw) in dockerfile.lines().enumerate() {
        let trimmed = raw.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_none()) {
            continue;
        }
        let (start, mut text) = current.take().unwrap_or((i + 1, String::new()));
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                text.push_str(head);
                text.push(' ');
                current = Some((start, text));
            }
            None => {
                text.push_str(trimmed);
                out.push((start, text.trim().to_owned()));
            }
        }
    }
    if let Some((start, text)) = current
        && !text.trim().is_empty()
    {
        out.push((start, text.trim().to_owned()));
    }
    out
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A JSON array of strings, if `s` is one.
fn json_array(s: &str) -> Option<Vec<String>> {
    s.trim_start()
        .starts_with('[')
        .then(|| serde_json::from_str::<Vec<String>>(s).ok())
        .flatten()
}

fn command_form(rest: &str) -> Result<CommandForm, String> {
    Ok(match json_array(rest) {
        Some(args) if args.is_empty() => return Err("an empty command".into()),
        Some(args) => CommandForm::Exec(args),
        None => CommandForm::Shell(rest.to_owned()),
    })
}

fn copy_args(rest: &str, keyword: &str) -> Result<CopyArgs, String> {
    let mut rest = rest.trim();
    let (mut chown, mut chmod) = (None, None);
    while let Some(flag) = rest.strip_prefix("--") {
        let (flag, tail) = flag.split_once(char::is_whitespace).unwrap_or((flag, ""));
        rest = tail.trim_start();
        match flag.split_once('=') {
            Some(("chown", v)) => chown = Some(unquote(v)?),
            Some(("chmod", v)) => {
                chmod = Some(
                    u32::from_str_radix(&unquote(v)?, 8)
                        .ok()
                        .filter(|m| *m <= 0o7777)
                        .ok_or_else(|| format!("{keyword} --chmod={v}: not an octal mode"))?,
                )
            }
            Some(("from", _)) => {
                return Err(format!(
                    "{keyword} --from needs a multi-stage build, which is not supported"
                ));
            }
            _ => return Err(format!("{keyword}: unsupported flag --{flag}")),
        }
    }
    let mut words = match json_array(rest) {
        Some(words) => words,
        None => words(rest)?,
    };
    if words.len() < 2 {
        return Err(format!(
            "{keyword} needs at least one source and a destination"
        ));
    }
    let dest = words.pop().expect("two or more words");
    Ok(CopyArgs {
        sources: words,
        dest,
        chown,
        chmod,
    })
}

/// `K=V K2="v 2"` pairs, or the legacy single `K value with spaces`.
fn pairs(rest: &str, keyword: &str) -> Result<Vec<(String, String)>, String> {
    let first = rest.split_whitespace().next().unwrap_or_default();
    if !first.contains('=') {
        let (name, value) = rest
            .split_once(char::is_whitespace)
            .ok_or_else(|| format!("{keyword} {rest}: expected NAME=value"))?;
        return Ok(vec![(name.to_owned(), value.trim().to_owned())]);
    }
    // Values stay raw (quotes included) so expansion can see which parts were quoted.
    raw_words(rest)?
        .into_iter()
        .map(|word| {
            let (name, value) = word
                .split_once('=')
                .ok_or_else(|| format!("{keyword}: {word:?} is not NAME=value"))?;
            if name.is_empty() {
                return Err(format!("{keyword}: {word:?} has no name"));
            }
            Ok((unquote(name)?, value.to_owned()))
        })
        .collect()
}

/// Splits at unquoted whitespace, keeping quotes and escapes in the words.
fn raw_words(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut quote = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, c) if c.is_whitespace() => {
                if !current.is_empty() {
                    words.push(std::mem::take(&mut current));
                }
            }
            (None, '\'' | '"') => {
                quote = Some(c);
                current.push(c);
            }
            (Some(q), c) if c == q => {
                quote = None;
                current.push(c);
            }
            (Some('\''), c) => current.push(c),
            (_, '\\') => {
                current.push('\\');
                if let Some(next) = chars.next() {
                    current.push(next);
                }
            }
            (_, c) => current.push(c),
        }
    }
    if quote.is_some() {
        return Err(format!("unterminated quote in {s:?}"));
    }
    if !current.is_empty() {
        words.push(current);
    }
    Ok(words)
}

/// Words with quotes removed and no expansion.
fn words(s: &str) -> Result<Vec<String>, String> {
    raw_words(s)?.iter().map(|w| unquote(w)).collect()
}

fn unquote(word: &str) -> Result<String, String> {
    expand(word, &BTreeMap::new(), false)
}

/// Removes quotes and escapes from `word`; with `substitute`, expands `$NAME`, `${NAME}` and
/// `${NAME:-default}`/`${NAME:+alt}` from `vars` outside single quotes (unknown names expand
/// to nothing, as in Docker).
pub fn expand(
    word: &str,
    vars: &BTreeMap<String, String>,
    substitute: bool,
) -> Result<String, String> {
    let mut out = String::new();
    let mut quote: Option<char> = None;
    let chars: Vec<char> = word.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (Some('\''), c) => out.push(c),
            (_, '\\') if i + 1 < chars.len() => {
                i += 1;
                out.push(chars[i]);
            }
            (_, '$') if substitute && i + 1 < chars.len() => {
                if chars[i + 1] == '{' {
                    let close = chars[i..]
                        .iter()
                        .position(|&c| c == '}')
                        .ok_or_else(|| format!("unterminated ${{ in {word:?}"))?;
                    let inner: String = chars[i + 2..i + close].iter().collect();
                    let (name, op) = match inner.find(':') {
                        Some(p) => (&inner[..p], Some(&inner[p + 1..])),
                        None => (inner.as_str(), None),
                    };
                    let value = vars.get(name).filter(|v| !v.is_empty());
                    match op {
                        None => out.push_str(vars.get(name).map_or("", String::as_str)),
                        Some(op) if op.starts_with('-') => match value {
                            Some(v) => out.push_str(v),
                            None => out.push_str(&expand(&op[1..], vars, true)?),
                        },
                        Some(op) if op.starts_with('+') => {
                            if value.is_some() {
                                out.push_str(&expand(&op[1..], vars, true)?);
                            }
                        }
                        Some(op) => {
                            return Err(format!("unsupported substitution ${{{name}:{op}}}"));
                        }
                    }
                    i += close;
                } else {
                    let len = chars[i + 1..]
                        .iter()
                        .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
                        .count();
                    if len == 0 {
                        out.push('$');
                    } else {
                        let name: String = chars[i + 1..i + 1 + len].iter().collect();
                        out.push_str(vars.get(&name).map_or("", String::as_str));
                        i += len;
                    }
                }
            }
            (_, c) => out.push(c),
        }
        i += 1;
    }
    if quote.is_some() {
        return Err(format!("unterminated quote in {word:?}"));
    }
    Ok(out)
}

/// Expands every word of `s` (for `WORKDIR`, `USER`, `COPY` paths …) and joins them with spaces.
pub fn expand_words(s: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    Ok(raw_words(s)?
        .iter()
        .map(|w| expand(w, vars, true))
        .collect::<Result<Vec<_>, _>>()?
        .join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_sdk_generates() {
        let dockerfile = "FROM oci-archive:/base.tar\nRUN echo hi > /x && \\\n    echo there\n\
            # a comment\nENV X='y z' EMPTY=\nENV LEGACY some value\nWORKDIR '/app'\n\
            COPY [\"tmp/ctx/file.txt\", \"/home/daytona/file.txt\"]\n\
            COPY --chown=daytona:daytona --chmod=644 a b /dest/\n\
            ENTRYPOINT [\"sleep\", \"infinity\"]\nCMD echo hi\nUSER daytona\nEXPOSE 8080/tcp 9000\n\
            LABEL org.example=\"a b\"\nARG V=1\nRUN \"bash\" \"-c\" \"echo hi\"\n";
        let steps = parse(dockerfile).unwrap();
        let kinds: Vec<_> = steps.iter().map(|s| s.instruction.clone()).collect();
        assert_eq!(
            kinds[0],
            Instruction::From {
                image: "oci-archive:/base.tar".into()
            }
        );
        assert_eq!(
            kinds[1],
            Instruction::Run(CommandForm::Shell("echo hi > /x &&  echo there".into()))
        );
        assert_eq!(steps[1].line, 2);
        assert_eq!(
            kinds[2],
            Instruction::Env(vec![
                ("X".into(), "'y z'".into()),
                ("EMPTY".into(), "".into())
            ])
        );
        assert_eq!(
            kinds[3],
            Instruction::Env(vec![("LEGACY".into(), "some value".into())])
        );
        assert_eq!(kinds[4], Instruction::Workdir("'/app'".into()));
        assert_eq!(
            kinds[5],
            Instruction::Copy(CopyArgs {
                sources: vec!["tmp/ctx/file.txt".into()],
                dest: "/home/daytona/file.txt".into(),
                chown: None,
                chmod: None,
            })
        );
        assert_eq!(
            kinds[6],
            Instruction::Copy(CopyArgs {
                sources: vec!["a".into(), "b".into()],
                dest: "/dest/".into(),
                chown: Some("daytona:daytona".into()),
                chmod: Some(0o644),
            })
        );
        assert_eq!(
            kinds[7],
            Instruction::Entrypoint(CommandForm::Exec(vec!["sleep".into(), "infinity".into()]))
        );
        assert_eq!(
            match &kinds[8] {
                Instruction::Cmd(c) => c.argv(),
                _ => panic!(),
            },
            ["/bin/sh", "-c", "echo hi"]
        );
        assert_eq!(
            kinds[10],
            Instruction::Expose(vec!["8080/tcp".into(), "9000".into()])
        );
        assert_eq!(
            kinds[11],
            Instruction::Label(vec![("org.example".into(), "\"a b\"".into())])
        );
        assert_eq!(
            kinds[12],
            Instruction::Arg {
                name: "V".into(),
                default: Some("1".into())
            }
        );
    }

    #[test]
    fn refuses_what_it_cannot_build_naming_the_line() {
        for (file, needle) in [
            ("RUN x\n", "RUN before FROM"),
            ("FROM a\nFROM b\n", "multi-stage"),
            ("FROM a\nCOPY --from=x a b\n", "--from"),
            ("FROM a\nSHELL [\"bash\"]\n", "SHELL is not supported"),
            ("FROM a\nFROBNICATE\n", "needs arguments"),
            ("FROM a\nFROBNICATE x\n", "unknown instruction FROBNICATE"),
            ("FROM a\nCOPY onlyone\n", "at least one source"),
            ("FROM a\nENV X='open\n", "unterminated quote"),
            ("# nothing\n", "no FROM"),
        ] {
            let err = parse(file).unwrap_err();
            assert!(err.to_string().contains(needle), "{file:?}: {err}");
        }
        let err = parse("FROM a\n\nRUN ok\nCOPY x\n").unwrap_err();
        assert_eq!(err.line, 4);
    }

    #[test]
    fn expansion_follows_docker() {
        let vars: BTreeMap<String, String> = [("A", "1"), ("E", "")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let x = |s: &str| expand(s, &vars, true).unwrap();
        assert_eq!(x("$A-${A}"), "1-1");
        assert_eq!(x("'$A'"), "$A");
        assert_eq!(x("\"$A b\""), "1 b");
        assert_eq!(x("${E:-dflt}/${MISSING:-x}/${A:+set}"), "dflt/x/set");
        assert_eq!(x("\\$A"), "$A");
        assert_eq!(x("$"), "$");
        assert_eq!(
            expand_words("/app/$A 'two words'", &vars).unwrap(),
            "/app/1 two words"
        );
    }
}
