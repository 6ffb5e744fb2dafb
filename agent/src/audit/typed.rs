//! Lines typed into a terminal (an SSH shell, a Kubernetes exec), read
//! back from the keystrokes: an audit aid (the recording's input; for SSH
//! also a `command` event each), not a gate — the shell's own editing,
//! history and completion are not replayed. Raw keystrokes are never
//! recorded.
//!
//! Keystrokes the terminal did not echo (a password at a `sudo` prompt)
//! are not kept: a line counts as echoed when it ends a line of the
//! server's output after it was typed (as a terminal shows it: escape
//! sequences left out, backspaces applied, Enter echoed as a line end),
//! and an unechoed line is recorded only by its length. Found anywhere in
//! the output, a short password would count as echoed by any word that
//! holds it ("a" in "Last login"). Lines are masked when they are
//! recorded.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

/// The longest line kept; the rest of a longer one is dropped.
const MAX_LINE: usize = 4096;
/// Lines waiting for their echo at most; past it (input piped in, never
/// echoed) new lines join the last one, cut at [`MAX_LINE`] and marked
/// approximate, so memory stays bounded.
const MAX_WAITING: usize = 64;
/// How much output is kept to check a line's echo against.
const MAX_ECHO: usize = 16 * 1024;
/// How long a line waits for its echo before it counts as unechoed.
const ECHO_WAIT: Duration = Duration::from_secs(2);

/// A line the user ended with Enter.
#[derive(Debug, PartialEq, Eq)]
pub struct Line {
    pub text: String,
    /// The terminal showed it as typed.
    pub echoed: bool,
    /// Cursor keys, tab completion or a cut-off made it differ from what
    /// the shell ran.
    pub approximate: bool,
}

impl Line {
    /// What the audit shows of it: its text if it was echoed, else only
    /// that something was typed.
    pub fn shown(&self) -> String {
        if self.echoed {
            self.text.clone()
        } else {
            format!("(typed without echo: {} characters)", self.text.chars().count())
        }
    }
}

/// Keystrokes in, lines out once their echo is seen or given up on.
#[derive(Default)]
pub struct TypedLines {
    line: Vec<u8>,
    approximate: bool,
    /// Inside an escape sequence the client sent (cursor keys).
    escape: Escape,
    /// Lines ended, waiting for their echo.
    ended: VecDeque<(Vec<u8>, bool, Instant)>,
    /// Output sent since the oldest waiting line began, as the terminal
    /// shows it (escape sequences left out, backspaces applied, each line
    /// end a `\n`).
    echo: Vec<u8>,
    echo_escape: Escape,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum Escape {
    #[default]
    None,
    /// After ESC.
    Start,
    /// In a CSI, SS3 or OSC sequence, until its final byte.
    Sequence,
}

impl TypedLines {
    /// Keystrokes from the client.
    pub fn input(&mut self, data: &[u8]) {
        for &b in data {
            match (self.escape, b) {
                (Escape::Start, b'[' | b'O') => self.escape = Escape::Sequence,
                (Escape::Start, _) => self.escape = Escape::None,
                (Escape::Sequence, 0x40..=0x7e) => self.escape = Escape::None,
                (Escape::Sequence, _) => {}
                (Escape::None, 0x1b) => {
                    self.escape = Escape::Start;
                    self.approximate = true;
                }
                (Escape::None, b'\r' | b'\n') => self.end_line(),
                (Escape::None, 0x7f | 0x08) => pop_char(&mut self.line),
                // Ctrl-U and Ctrl-C drop the line.
                (Escape::None, 0x15 | 0x03) => {
                    self.line.clear();
                    self.approximate = false;
                }
                (Escape::None, b'\t') => self.approximate = true,
                (Escape::None, c) if c < 0x20 => {}
                (Escape::None, c) => {
                    if self.line.is_empty() && self.ended.is_empty() {
                        // A new line begins: earlier output is no echo of it.
                        self.echo.clear();
                    }
                    if self.line.len() < MAX_LINE {
                        self.line.push(c);
                    } else {
                        self.approximate = true;
                    }
                }
            }
        }
    }

    /// The server's output, before masking (a masked echo would not match
    /// what was typed): the lines whose echo it completes. Output while
    /// nothing is typed or waiting is not kept.
    pub fn output(&mut self, data: &[u8]) -> Vec<Line> {
        let keep = !self.line.is_empty() || !self.ended.is_empty();
        for &b in data {
            match (self.echo_escape, b) {
                (Escape::Start, b'[' | b'O' | b']') => self.echo_escape = Escape::Sequence,
                (Escape::Start, _) => self.echo_escape = Escape::None,
                // OSC sequences end with BEL; CSI ones with a final byte.
                (Escape::Sequence, 0x40..=0x7e | 0x07) => self.echo_escape = Escape::None,
                (Escape::Sequence, _) => {}
                (Escape::None, 0x1b) => self.echo_escape = Escape::Start,
                (Escape::None, _) if !keep => {}
                (Escape::None, 0x08) if self.echo.last() != Some(&b'\n') => pop_char(&mut self.echo),
                // A CR alone (a wrapped line redrawn) is no line end.
                (Escape::None, c) if c >= 0x20 || c == b'\n' => self.echo.push(c),
                (Escape::None, _) => {}
            }
        }
        if self.echo.len() > MAX_ECHO {
            self.echo.drain(..self.echo.len() - MAX_ECHO);
        }
        if !keep {
            return Vec::new();
        }
        self.resolve(None)
    }

    /// Lines that waited long enough for an echo that did not come (and,
    /// at the end of the channel, every line still waiting).
    pub fn expired(&mut self, now: Instant, all: bool) -> Vec<Line> {
        self.resolve(Some((now, all)))
    }

    pub fn has_pending(&self) -> bool {
        !self.ended.is_empty()
    }

    fn end_line(&mut self) {
        let bytes = std::mem::take(&mut self.line);
        let approximate = std::mem::take(&mut self.approximate);
        if bytes.is_empty() {
            return;
        }
        let full = self.ended.len() >= MAX_WAITING;
        match self.ended.back_mut() {
            Some((last, approx, _)) if full => {
                if last.len() < MAX_LINE {
                    let room = MAX_LINE - last.len() - 1;
                    last.push(b'\n');
                    last.extend_from_slice(&bytes[..bytes.len().min(room)]);
                }
                *approx = true;
            }
            _ => self.ended.push_back((bytes, approximate, Instant::now())),
        }
    }

    /// Takes the waiting lines in order: echoed ones (their echo is then
    /// consumed), and with `expire` the ones past their wait as unechoed.
    fn resolve(&mut self, expire: Option<(Instant, bool)>) -> Vec<Line> {
        let mut lines = Vec::new();
        while let Some((bytes, approximate, at)) = self.ended.front() {
            let found = echo_end(&self.echo, bytes);
            let expired = expire.is_some_and(|(now, all)| all || now.duration_since(*at) >= ECHO_WAIT);
            if found.is_none() && !expired {
                break;
            }
            if let Some(end) = found {
                self.echo.drain(..end);
            }
            lines.push(Line {
                text: String::from_utf8_lossy(bytes).into_owned(),
                echoed: found.is_some(),
                approximate: *approximate,
            });
            self.ended.pop_front();
        }
        lines
    }
}

#[cfg(test)]
mod bounds {
    use super::*;

    /// Piped input that is never echoed: the waiting lines stay bounded,
    /// and nothing typed is lost from the count of lines.
    #[test]
    fn unechoed_piped_lines_stay_bounded() {
        let mut t = TypedLines::default();
        for i in 0..10_000 {
            t.input(format!("line {i}\r").as_bytes());
        }
        assert_eq!(t.ended.len(), MAX_WAITING);
        assert!(t.ended.iter().all(|(b, _, _)| b.len() <= MAX_LINE));
        let lines = t.expired(Instant::now(), true);
        assert_eq!(lines.len(), MAX_WAITING);
        assert!(lines.last().unwrap().approximate && !lines[0].approximate);
    }
}

/// Where the echo of `typed` ends in `echo`: the first place it ends a
/// line (a line cut at [`MAX_LINE`] was longer: there it only begins one).
fn echo_end(echo: &[u8], typed: &[u8]) -> Option<usize> {
    let cut = typed.len() >= MAX_LINE;
    memchr::memmem::find_iter(echo, typed)
        .map(|start| start + typed.len())
        .find(|&end| cut || echo.get(end) == Some(&b'\n'))
}

/// One character back (a UTF-8 sequence whole).
fn pop_char(buf: &mut Vec<u8>) {
    while let Some(c) = buf.pop() {
        if c & 0xc0 != 0x80 {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_read_from_keystrokes_with_their_edits_once_echoed() {
        let mut t = TypedLines::default();
        t.output(b"$ ");
        t.input(b"ls -lx");
        t.output(b"ls -lx");
        t.input(&[0x7f]);
        t.output(b"\x08 \x08\x1b[K");
        t.input(b"a\r");
        assert!(t.has_pending(), "the echo of the last key has not come yet");
        let lines = t.output(b"a\r\n");
        assert_eq!(
            lines,
            vec![Line {
                text: "ls -la".into(),
                echoed: true,
                approximate: false
            }]
        );
        // A cursor key or a tab: the shell may have run something else.
        t.output(b"$ ");
        t.input(b"cat /srv/ph\t\x1b[A\r");
        let lines = t.output(b"cat /srv/ph\r\n");
        assert!(lines[0].approximate, "{lines:?}");
        // Ctrl-U drops what was typed; an empty line is no line.
        t.input(b"rm -rf x\x15\r");
        assert!(!t.has_pending());
    }

    #[test]
    fn a_burst_of_lines_is_matched_to_the_echo_that_follows() {
        let mut t = TypedLines::default();
        t.input(b"echo one\necho two\n");
        let lines = t.output(b"echo one\r\none\r\n$ echo two\r\ntwo\r\n");
        let shown: Vec<String> = lines.iter().map(Line::shown).collect();
        assert_eq!(shown, ["echo one", "echo two"]);
    }

    #[test]
    fn keystrokes_without_echo_are_kept_only_by_length() {
        let mut t = TypedLines::default();
        t.output(b"[sudo] password for deploy: ");
        t.input(b"hunter2\r");
        assert!(t.output(b"\r\nLast login: today\r\n").is_empty());
        assert!(t.expired(Instant::now(), false).is_empty(), "still within its wait");
        let lines = t.expired(Instant::now() + ECHO_WAIT, false);
        assert_eq!(lines[0].shown(), "(typed without echo: 7 characters)");
        // Echo interleaved with colour codes still counts.
        t.input(b"echo hi\n");
        let lines = t.output(b"\x1b[1;32me\x1b[0mcho hi\r\n");
        assert_eq!(lines[0].shown(), "echo hi");
        // At the end of the channel every waiting line is taken.
        t.input(b"exit\r");
        assert_eq!(
            t.expired(Instant::now(), true)[0].shown(),
            "(typed without echo: 4 characters)"
        );
    }

    /// A short password typed at a prompt that does not echo: the letters
    /// in the output that follows are no echo of it; only a line that
    /// ends with it is.
    #[test]
    fn an_echo_must_end_a_line_of_output() {
        let mut t = TypedLines::default();
        t.output(b"Password: ");
        t.input(b"a\r");
        assert!(t.output(b"\r\nLast login: Mon from 10.0.0.1\r\n$ ").is_empty());
        assert_eq!(
            t.expired(Instant::now() + ECHO_WAIT, false)[0].shown(),
            "(typed without echo: 1 characters)"
        );
        // Typed ahead of the prompt (piped into `ssh -tt`): the shell
        // echoes it after its prompt, and that counts.
        t.input(b"ls\r");
        assert_eq!(t.output(b"Welcome\r\nroot@h:~# ls\r\n")[0].shown(), "ls");
        // A wrapped line's redraw (a CR alone) does not end it.
        t.input(b"echo abc\r");
        assert!(t.output(b"echo a\rbc").is_empty());
        assert_eq!(t.output(b"\r\n")[0].shown(), "echo abc");
    }

    #[test]
    fn output_with_nothing_typed_is_not_kept() {
        let mut t = TypedLines::default();
        t.output(&vec![b'x'; 100_000]);
        assert!(t.echo.is_empty());
        t.input(b"ls\r");
        assert_eq!(t.output(b"ls\r\n")[0].shown(), "ls");
    }

    #[test]
    fn long_lines_are_cut_and_marked() {
        let mut t = TypedLines::default();
        let long = vec![b'x'; MAX_LINE + 10];
        let mut input = long.clone();
        input.push(b'\r');
        t.input(&input);
        let lines = t.output(&long);
        assert_eq!(lines[0].text.len(), MAX_LINE);
        assert!(lines[0].approximate && lines[0].echoed);
    }
}
