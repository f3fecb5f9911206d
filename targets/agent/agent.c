/*
 * procfuzz guest agent: runs procfuzz programs inside the guest kernel.
 *
 *   agent serve <device>|-   the controller: answers frames on the serial channel (fd 0/1 for
 *                            "-"), one fresh sandbox per program (docs/agent-protocol.md)
 *   agent actor <fd>         an actor process re-entering after the `exec` op
 *   agent parse              reads a program on stdin, prints `ok` or the parse error (tests)
 *
 * Build: gcc -static -O2 -Wall -Wextra -Werror -pthread -o agent targets/agent/agent.c
 *
 * The reference model predicts exact pid numbers inside the sandbox, so nothing here ever
 * creates a task in the sandbox other than the actors themselves.
 *
 * File descriptors of every actor process (fixed, so that /proc/<pid>/fd is predictable):
 *   0-2 /dev/null, 3 the process channel, 101..164 held fds f1..f64,
 *   201..264 the channels of threads t1..t64 (close-on-exec).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_link.h>
#include <linux/membarrier.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/veth.h>
#include <net/if.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

enum {
	MAX_OPS = 256,
	MAX_HANDLES = 64,          /* per kind: p1..p64, t1..t64, m1..m64, f1..f64 */
	MAX_PATH_TEXT = 200,       /* a path template (reference/program.py MAX_PATH) */
	MAX_TEXT = 64 * 1024,      /* program text */
	MAX_WORDS = MAX_TEXT / 2 + 1,   /* words in one line (repeated options are allowed) */
	MAX_PAYLOAD = 1 << 20,     /* frame payload */
	RESULT_CAP = 60 * 1024,    /* one op's result string, terminator included */
	PATH_CAP = 1024,           /* a resolved path */
	DATA_CAP = 64,             /* mount options */
	MAX_NAMES = 8192,          /* directory entries in one listing */
	MAX_LEVELS = 40,           /* NSpid entries (the kernel nests at most 32 pid namespaces) */
	CHAN_FD = 3,
	HELD_FD_BASE = 100,
	THREAD_CHAN_BASE = 200,
	INVISIBLE_PID = 999999,
	READ_SIZE = 4096,
};

static const long long OP_DEADLINE_NS = 5000000000LL;
static const long long TEARDOWN_DEADLINE_NS = 10000000000LL;
static const long long FLUSH_DEADLINE_NS = 200000000LL;

#define SANDBOX_FLAGS (CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS)

/* The agent binary, re-executed by the `exec` op ("/agent" in the guest). */
static char self_exe[PATH_CAP] = "/agent";

/* ---- small helpers ------------------------------------------------------------------------ */

#define ERRNO_NAME(e) { e, #e }
static const struct { int num; const char *name; } errno_names[] = {
	ERRNO_NAME(EPERM), ERRNO_NAME(ENOENT), ERRNO_NAME(ESRCH), ERRNO_NAME(EINTR),
	ERRNO_NAME(EIO), ERRNO_NAME(ENXIO), ERRNO_NAME(E2BIG), ERRNO_NAME(ENOEXEC),
	ERRNO_NAME(EBADF), ERRNO_NAME(ECHILD), ERRNO_NAME(EAGAIN), ERRNO_NAME(ENOMEM),
	ERRNO_NAME(EACCES), ERRNO_NAME(EFAULT), ERRNO_NAME(ENOTBLK), ERRNO_NAME(EBUSY),
	ERRNO_NAME(EEXIST), ERRNO_NAME(EXDEV), ERRNO_NAME(ENODEV), ERRNO_NAME(ENOTDIR),
	ERRNO_NAME(EISDIR), ERRNO_NAME(EINVAL), ERRNO_NAME(ENFILE), ERRNO_NAME(EMFILE),
	ERRNO_NAME(ENOTTY), ERRNO_NAME(ETXTBSY), ERRNO_NAME(EFBIG), ERRNO_NAME(ENOSPC),
	ERRNO_NAME(ESPIPE), ERRNO_NAME(EROFS), ERRNO_NAME(EMLINK), ERRNO_NAME(EPIPE),
	ERRNO_NAME(EDOM), ERRNO_NAME(ERANGE), ERRNO_NAME(EDEADLK), ERRNO_NAME(ENAMETOOLONG),
	ERRNO_NAME(ENOLCK), ERRNO_NAME(ENOSYS), ERRNO_NAME(ENOTEMPTY), ERRNO_NAME(ELOOP),
	ERRNO_NAME(ENOMSG), ERRNO_NAME(EIDRM), ERRNO_NAME(ENODATA), ERRNO_NAME(ETIME),
	ERRNO_NAME(ENOLINK), ERRNO_NAME(EPROTO), ERRNO_NAME(EBADMSG), ERRNO_NAME(EOVERFLOW),
	ERRNO_NAME(EBADFD), ERRNO_NAME(EILSEQ), ERRNO_NAME(EUSERS), ERRNO_NAME(ENOTSOCK),
	ERRNO_NAME(EDESTADDRREQ), ERRNO_NAME(EMSGSIZE), ERRNO_NAME(EPROTOTYPE),
	ERRNO_NAME(ENOPROTOOPT), ERRNO_NAME(EPROTONOSUPPORT), ERRNO_NAME(EOPNOTSUPP),
	ERRNO_NAME(EAFNOSUPPORT), ERRNO_NAME(EADDRINUSE), ERRNO_NAME(EADDRNOTAVAIL),
	ERRNO_NAME(ENETDOWN), ERRNO_NAME(ENETUNREACH), ERRNO_NAME(ECONNABORTED),
	ERRNO_NAME(ECONNRESET), ERRNO_NAME(ENOBUFS), ERRNO_NAME(EISCONN), ERRNO_NAME(ENOTCONN),
	ERRNO_NAME(ETIMEDOUT), ERRNO_NAME(ECONNREFUSED), ERRNO_NAME(EHOSTUNREACH),
	ERRNO_NAME(EALREADY), ERRNO_NAME(EINPROGRESS), ERRNO_NAME(ESTALE), ERRNO_NAME(EUCLEAN),
	ERRNO_NAME(EREMOTEIO), ERRNO_NAME(EDQUOT), ERRNO_NAME(ENOMEDIUM), ERRNO_NAME(ECANCELED),
	ERRNO_NAME(ENOKEY), ERRNO_NAME(EKEYEXPIRED), ERRNO_NAME(EKEYREVOKED),
	ERRNO_NAME(EKEYREJECTED), ERRNO_NAME(EOWNERDEAD), ERRNO_NAME(ENOTRECOVERABLE),
};

/* Writes the C macro name of errno value e ("E<number>" when unknown) to out. */
static void put_errno(char *out, int e)
{
	for (size_t i = 0; i < sizeof errno_names / sizeof errno_names[0]; i++) {
		if (errno_names[i].num == e) {
			strcpy(out, errno_names[i].name);
			return;
		}
	}
	sprintf(out, "E%d", e);
}

/* "ok" or the errno name, for a libc call returning -1 on failure. */
static void put_status(char *out, int rc)
{
	if (rc < 0)
		put_errno(out, errno);
	else
		strcpy(out, "ok");
}

static long long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/*
 * The pause between two polls of a condition (never a wait for the condition itself): 50 us,
 * doubling with each poll up to 1.6 ms.  Under TCG every wake-up costs emulated work that the
 * task we wait for needs: a fixed 100 us period kept the vCPU busy polling.
 */
static void pause_briefly(int *polls)
{
	long ns = 50000L << (*polls < 5 ? (*polls)++ : 5);
	struct timespec ts = { 0, ns };
	nanosleep(&ts, NULL);
}

/* Content digest of `read` results: reference/trace.py fnv1a64. */
static unsigned long long fnv1a64(const unsigned char *data, size_t len)
{
	unsigned long long h = 0xCBF29CE484222325ULL;
	for (size_t i = 0; i < len; i++)
		h = (h ^ data[i]) * 0x100000001B3ULL;
	return h;
}

/* A bounded string being built; `full` records that something did not fit. */
struct text {
	char *buf;
	size_t len, cap;
	int full;
};

static void text_add(struct text *t, const char *s, size_t n)
{
	if (t->full || t->len + n + 1 > t->cap) {
		t->full = 1;
		return;
	}
	memcpy(t->buf + t->len, s, n);
	t->len += n;
	t->buf[t->len] = '\0';
}

static void text_str(struct text *t, const char *s)
{
	text_add(t, s, strlen(s));
}

__attribute__((format(printf, 2, 3)))
static void text_printf(struct text *t, const char *fmt, ...)
{
	char buf[256];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	text_add(t, buf, n < (int)sizeof buf ? (size_t)n : sizeof buf - 1);
}

/*
 * Result payloads from the kernel (names, link targets) go into a line-based reply: bytes
 * outside printable ASCII and the backslash become \xHH, and so does `sep` (',' in lists).
 */
static void text_escaped(struct text *t, const char *s, char sep)
{
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c < 0x20 || c > 0x7e || c == '\\' || c == (unsigned char)sep)
			text_printf(t, "\\x%02x", c);
		else
			text_add(t, s, 1);
	}
}

static int write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;
	while (len > 0) {
		ssize_t n = write(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		p += n;
		len -= n;
	}
	return 0;
}

/* Reads a whole (small) file; returns its length or -1 with errno set. */
static ssize_t read_file(const char *path, char *buf, size_t cap)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	size_t len = 0;
	while (len + 1 < cap) {
		ssize_t n = read(fd, buf + len, cap - 1 - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		len += n;
	}
	buf[len] = '\0';
	close(fd);
	return len;
}

/* Puts `from` at fd number `to`, inheritable across exec. */
static void move_fd(int from, int to)
{
	if (from == to) {
		fcntl(to, F_SETFD, 0);
		return;
	}
	dup2(from, to);
	close(from);
}

/* ---- channel messages (SOCK_SEQPACKET, one message per command or answer) ---------------- */

union fd_cmsg {
	char buf[CMSG_SPACE(sizeof(int))];
	struct cmsghdr align;
};

/* Sends one message, with passfd attached when it is >= 0; 0 on success. */
static int send_msg(int sock, const void *buf, size_t len, int passfd)
{
	union fd_cmsg ctrl;
	struct iovec iov = { (void *)buf, len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	if (passfd >= 0) {
		memset(&ctrl, 0, sizeof ctrl);
		mh.msg_control = ctrl.buf;
		mh.msg_controllen = sizeof ctrl.buf;
		struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(cm), &passfd, sizeof(int));
	}
	ssize_t n;
	do
		n = sendmsg(sock, &mh, MSG_NOSIGNAL);
	while (n < 0 && errno == EINTR);
	return n == (ssize_t)len ? 0 : -1;
}

/*
 * Receives one message (0: the peer is gone).  A passed fd arrives close-on-exec in *passfd
 * (-1 when none); callers that pass NULL get it closed.  A truncated message is an error.
 */
static ssize_t recv_msg(int sock, void *buf, size_t cap, int *passfd)
{
	union fd_cmsg ctrl;
	struct iovec iov = { buf, cap };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1,
			     .msg_control = ctrl.buf, .msg_controllen = sizeof ctrl.buf };
	ssize_t n;
	do
		n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
	while (n < 0 && errno == EINTR);
	int fd = -1;
	if (n >= 0) {
		for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
			if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS)
				memcpy(&fd, CMSG_DATA(cm), sizeof(int));
		}
	}
	if (passfd)
		*passfd = fd;
	else if (fd >= 0)
		close(fd);
	if (n >= 0 && (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC))) {
		errno = EMSGSIZE;
		return -1;
	}
	return n;
}

/* ---- programs: canonical text (reference/program.py) ------------------------------------- */

enum op_kind {
	OP_SPAWN, OP_SPAWN_THREAD, OP_EXIT, OP_REAP, OP_EXEC, OP_SETUID, OP_SETGID,
	OP_MOUNT_PROC, OP_UMOUNT, OP_OPEN, OP_CLOSE, OP_CHDIR, OP_DROP_CACHES, OP_LOOKUP,
	OP_READDIR, OP_READLINK, OP_READ, OP_GETDENTS, OP_WRITE, OP_UNSHARE_NET, OP_SETNS_NET,
	OP_LINK_ADD, OP_LINK_DEL, OP_LINK_RENAME, OP_LINK_SET_NETNS, OP_LINK_UP, OP_LINK_DOWN,
	OP_KINDS
};

struct handle {
	char kind;          /* 'p', 't', 'm', 'f'; 0: none */
	int n;              /* 1..64 (0 with kind 'f': the cwd of `getdents A cwd`) */
};

/*
 * An option is a choice (`choices`, index 0 the default) or, with `type` set, an optional value
 * whose default is empty: 'D' a device name (link_add peer=), 'T' a task handle (peer_in=).
 */
struct option_spec {
	const char *name;
	char type;
	const char *choices[5];
};

enum { MAX_OPTS = 3 };

static const struct option_spec OPT_NEWPID = { "newpid", 0, { "0", "1" } };
static const struct option_spec OPT_LAZY = { "lazy", 0, { "0", "1" } };
static const struct option_spec OPT_RW = { "rw", 0, { "0", "1" } };
static const struct option_spec OPT_HIDEPID = { "hidepid", 0, { "off", "noaccess", "invisible", "ptraceable" } };
static const struct option_spec OPT_SUBSET = { "subset", 0, { "none", "pid" } };
static const struct option_spec OPT_KIND = { "kind", 0, { "dummy", "veth" } };
static const struct option_spec OPT_PEER = { "peer", 'D', { 0 } };
static const struct option_spec OPT_PEER_IN = { "peer_in", 'T', { 0 } };

/*
 * Positional argument letters: A actor (pN or tN), T another task (pN or tN), p process,
 * m mount, f held fd, F held fd or "cwd", P path template, I uid/gid, D device name (the
 * first D is the op's device, a second one link_rename's new name), V sysctl value.
 */
struct op_spec {
	const char *name;
	char creates;                        /* kind of the handle the op creates, or 0 */
	const char *args;
	const struct option_spec *opts[MAX_OPTS];
};

static const struct op_spec op_specs[OP_KINDS] = {
	[OP_SPAWN] = { "spawn", 'p', "A", { &OPT_NEWPID } },
	[OP_SPAWN_THREAD] = { "spawn_thread", 't', "A", { 0 } },
	[OP_EXIT] = { "exit", 0, "A", { 0 } },
	[OP_REAP] = { "reap", 0, "Ap", { 0 } },
	[OP_EXEC] = { "exec", 0, "A", { 0 } },
	[OP_SETUID] = { "setuid", 0, "AI", { 0 } },
	[OP_SETGID] = { "setgid", 0, "AI", { 0 } },
	[OP_MOUNT_PROC] = { "mount_proc", 'm', "A", { &OPT_HIDEPID, &OPT_SUBSET } },
	[OP_UMOUNT] = { "umount", 0, "Am", { &OPT_LAZY } },
	[OP_OPEN] = { "open", 'f', "AP", { &OPT_RW } },
	[OP_CLOSE] = { "close", 0, "Af", { 0 } },
	[OP_CHDIR] = { "chdir", 0, "AP", { 0 } },
	[OP_DROP_CACHES] = { "drop_caches", 0, "", { 0 } },
	[OP_LOOKUP] = { "lookup", 0, "AP", { 0 } },
	[OP_READDIR] = { "readdir", 0, "AP", { 0 } },
	[OP_READLINK] = { "readlink", 0, "AP", { 0 } },
	[OP_READ] = { "read", 0, "Af", { 0 } },
	[OP_GETDENTS] = { "getdents", 0, "AF", { 0 } },
	[OP_WRITE] = { "write", 0, "AfV", { 0 } },
	[OP_UNSHARE_NET] = { "unshare_net", 0, "A", { 0 } },
	[OP_SETNS_NET] = { "setns_net", 0, "AT", { 0 } },
	[OP_LINK_ADD] = { "link_add", 0, "AD", { &OPT_KIND, &OPT_PEER, &OPT_PEER_IN } },
	[OP_LINK_DEL] = { "link_del", 0, "AD", { 0 } },
	[OP_LINK_RENAME] = { "link_rename", 0, "ADD", { 0 } },
	[OP_LINK_SET_NETNS] = { "link_set_netns", 0, "ADT", { 0 } },
	[OP_LINK_UP] = { "link_up", 0, "AD", { 0 } },
	[OP_LINK_DOWN] = { "link_down", 0, "AD", { 0 } },
};

struct op {
	enum op_kind kind;
	struct handle ret, actor, target;   /* target: reap's child, umount's mount, an fd, the task
					       of setns_net/link_set_netns */
	struct handle peer_in;              /* link_add peer_in= (kind 0: none) */
	int id;                             /* setuid/setgid */
	int opt[MAX_OPTS];                  /* index of each choice option's value in its choices */
	int ndev;
	char dev[2][IFNAMSIZ];              /* the device; link_rename's new name or link_add's peer */
	char value[16];                     /* write: the sysctl value text */
	char path[MAX_PATH_TEXT + 1];
};

struct program {
	int nops;
	struct op ops[MAX_OPS];
};

/* Which handles exist so far while checking a program. */
struct defined {
	unsigned char seen[4][MAX_HANDLES + 1];
};

static int kind_index(char kind)
{
	return (int)(strchr("ptmf", kind) - "ptmf");
}

/* Parses [ptmf][1-9][0-9]{0,2} from s[0..len); the caller checks the limit of 64. */
static int parse_handle(const char *s, size_t len, struct handle *h)
{
	if (len < 2 || len > 4 || !memchr("ptmf", s[0], 4) || s[1] < '1' || s[1] > '9')
		return -1;
	h->kind = s[0];
	h->n = 0;
	for (size_t i = 1; i < len; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		h->n = h->n * 10 + (s[i] - '0');
	}
	return 0;
}

static int is_defined(const struct defined *d, struct handle h)
{
	return h.n >= 1 && h.n <= MAX_HANDLES && d->seen[kind_index(h.kind)][h.n];
}

/* For a '{' at p: parses the {handle} template and returns the text after it, or NULL. */
static const char *parse_template(const char *p, struct handle *h)
{
	const char *end = strchr(p, '}');
	if (!end || parse_handle(p + 1, end - p - 1, h) < 0)
		return NULL;
	return end + 1;
}

static int path_char_ok(char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
	       (c && strchr("_.-/{}+:", c));
}

/* The rules of reference/program.py _path; returns the problem or NULL. */
static const char *path_problem(const char *s)
{
	size_t len = strlen(s);
	if (len == 0 || len > MAX_PATH_TEXT)
		return "a path has 1 to 200 characters";
	for (const char *p = s; *p; p++) {
		if (!path_char_ok(*p))
			return "path has characters outside [A-Za-z0-9_.-/{}+:]";
	}
	int mounts = 0, tasks = 0;
	for (const char *p = s; *p;) {
		struct handle h;
		if (*p == '}')
			return "path has a malformed {handle} template";
		if (*p != '{') {
			p++;
			continue;
		}
		const char *next = parse_template(p, &h);
		if (!next)
			return "path has a malformed {handle} template";
		if (h.kind == 'm' && (mounts++ > 0 || p != s))
			return "a mount handle may only be the first component";
		tasks += h.kind == 'p' || h.kind == 't';
		p = next;
	}
	if (tasks && !mounts)
		return "pid/tid templates need a {mN} prefix to pick a pid namespace";
	if (s[0] == '/')
		return "absolute paths are not allowed; start with {mN}";
	return NULL;
}

/* Canonical decimal uid/gid 0..65534, as reference/program.py _id_number accepts. */
static int parse_id(const char *s, int *id)
{
	size_t len = strlen(s);
	if (len == 0 || len > 5 || (s[0] == '0' && len > 1) || strspn(s, "0123456789") != len)
		return -1;
	*id = atoi(s);
	return *id <= 65534 ? 0 : -1;
}

struct parse_error {
	char msg[200];
};

__attribute__((format(printf, 2, 3)))
static int fail(struct parse_error *e, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(e->msg, sizeof e->msg, fmt, ap);
	va_end(ap);
	return -1;
}

static int parse_handle_arg(const char *w, const char *kinds, struct handle *h, struct parse_error *e)
{
	if (parse_handle(w, strlen(w), h) < 0 || !strchr(kinds, h->kind))
		return fail(e, "expected a %s handle, got '%s'", kinds, w);
	if (h->n > MAX_HANDLES)
		return fail(e, "handle %s exceeds the limit of %d per kind", w, MAX_HANDLES);
	return 0;
}

/* [a-z][a-z0-9]{0,14} that is not a handle (reference/program.py _device). */
static int device_ok(const char *w)
{
	struct handle h;
	size_t len = strlen(w);
	if (len < 1 || len >= IFNAMSIZ || w[0] < 'a' || w[0] > 'z')
		return 0;
	for (size_t i = 1; i < len; i++) {
		if (!((w[i] >= 'a' && w[i] <= 'z') || (w[i] >= '0' && w[i] <= '9')))
			return 0;
	}
	return parse_handle(w, len, &h) < 0;
}

/* -?[0-9]{1,10} (reference/program.py _sysctl_value); kept as written. */
static int sysctl_value_ok(const char *w)
{
	size_t digits = strlen(w + (w[0] == '-'));
	return digits >= 1 && digits <= 10 && strspn(w + (w[0] == '-'), "0123456789") == digits;
}

static int parse_positional(char type, const char *w, struct op *op, struct parse_error *e)
{
	const char *problem;
	switch (type) {
	case 'A':
		return parse_handle_arg(w, "pt", &op->actor, e);
	case 'T':
		return parse_handle_arg(w, "pt", &op->target, e);
	case 'p':
	case 'm':
	case 'f':
		return parse_handle_arg(w, (char[]){ type, 0 }, &op->target, e);
	case 'F':
		if (strcmp(w, "cwd") == 0) {
			op->target = (struct handle){ 'f', 0 };
			return 0;
		}
		return parse_handle_arg(w, "f", &op->target, e);
	case 'P':
		if ((problem = path_problem(w)))
			return fail(e, "%s: '%.*s'", problem, MAX_PATH_TEXT, w);
		strcpy(op->path, w);
		return 0;
	case 'I':
		return parse_id(w, &op->id) < 0 ? fail(e, "expected a uid/gid in 0..65534, got '%s'", w) : 0;
	case 'D':
		if (!device_ok(w))
			return fail(e, "expected a device name [a-z][a-z0-9]{0,14} that is not a handle, got '%.40s'", w);
		strcpy(op->dev[op->ndev++], w);
		return 0;
	case 'V':
		if (!sysctl_value_ok(w))
			return fail(e, "expected an integer sysctl value, got '%.40s'", w);
		strcpy(op->value, w);
		return 0;
	}
	return fail(e, "internal: bad argument type");
}

/* Checks the (last) value given for option i of spec. */
static int parse_option(const struct op_spec *spec, int i, const char *value, struct op *op,
			struct parse_error *e)
{
	const struct option_spec *o = spec->opts[i];
	if (o->type == 'D') {
		if (!*value)
			return 0;
		if (!device_ok(value))
			return fail(e, "%s %s: bad device name '%.40s'", spec->name, o->name, value);
		strcpy(op->dev[1], value);
		return 0;
	}
	if (o->type == 'T')
		return *value ? parse_handle_arg(value, "pt", &op->peer_in, e) : 0;
	for (int c = 0; c < 5 && o->choices[c]; c++) {
		if (strcmp(value, o->choices[c]) == 0) {
			op->opt[i] = c;
			return 0;
		}
	}
	return fail(e, "%s %s: bad value '%.40s'", spec->name, o->name, value);
}

/* Splits a normalised line (the only blank is ' ') in place. */
static int split_words(char *line, char **words)
{
	int n = 0;
	for (char *w = strtok(line, " "); w; w = strtok(NULL, " "))
		words[n++] = w;
	return n;
}

/*
 * Parses one non-blank line `[ret =] kind positional... key=value...`.  As reference/program.py:
 * positional words and options may come in any order, and of an option given more than once
 * the last value counts (program.py collects options in a dict).
 */
static int parse_line(char *line, struct op *op, struct parse_error *e)
{
	static char *words[MAX_WORDS];
	char *ret = NULL;
	const char *optval[MAX_OPTS] = { 0 };
	int n = split_words(line, words), first = 0, npos = 0;
	memset(op, 0, sizeof *op);
	if (n >= 1 && strchr(words[0], '=')) {     /* "p2=spawn", "p2= spawn", as program.py */
		ret = words[0];
		words[0] = strchr(words[0], '=');
		*words[0]++ = '\0';
		first = *words[0] ? 0 : 1;
	} else if (n >= 2 && strcmp(words[1], "=") == 0) {
		ret = words[0];
		first = 2;
	}
	if (ret && parse_handle_arg(ret, "ptmf", &op->ret, e) < 0)
		return -1;
	if (first >= n)
		return fail(e, "missing op name");
	for (op->kind = 0; op->kind < OP_KINDS; op->kind++) {
		if (strcmp(words[first], op_specs[op->kind].name) == 0)
			break;
	}
	if (op->kind == OP_KINDS)
		return fail(e, "unknown op '%.40s'", words[first]);
	const struct op_spec *spec = &op_specs[op->kind];
	for (int i = first + 1; i < n; i++) {
		char *eq = strchr(words[i], '=');
		int rc = 0, o = 0;
		if (eq) {
			for (; o < MAX_OPTS && spec->opts[o]; o++) {
				if (strlen(spec->opts[o]->name) == (size_t)(eq - words[i]) &&
				    strncmp(words[i], spec->opts[o]->name, eq - words[i]) == 0)
					break;
			}
			if (o == MAX_OPTS || !spec->opts[o])
				rc = fail(e, "%s: unknown option '%.40s'", spec->name, words[i]);
			else
				optval[o] = eq + 1;
		} else if (npos < (int)strlen(spec->args)) {
			rc = parse_positional(spec->args[npos++], words[i], op, e);
		} else {
			rc = fail(e, "%s takes %zu positional argument(s)", spec->name, strlen(spec->args));
		}
		if (rc < 0)
			return rc;
	}
	if (npos != (int)strlen(spec->args))
		return fail(e, "%s takes %zu positional argument(s)", spec->name, strlen(spec->args));
	for (int o = 0; o < MAX_OPTS; o++) {
		if (optval[o] && parse_option(spec, o, optval[o], op, e) < 0)
			return -1;
	}
	if (op->ret.kind && !spec->creates)
		return fail(e, "%s does not create a handle", spec->name);
	if (op->ret.kind != spec->creates)
		return fail(e, "%s creates a handle: write '%cN = %s ...'", spec->name, spec->creates, spec->name);
	return 0;
}

/* Handles must be created before use and only once; p1 exists from the start. */
static int check_handles(const struct op *op, struct defined *d, struct parse_error *e)
{
	const struct handle *used[] = { &op->actor, &op->target, &op->peer_in };
	for (size_t i = 0; i < sizeof used / sizeof used[0]; i++) {
		if (used[i]->kind && used[i]->n && !is_defined(d, *used[i]))
			return fail(e, "handle %c%d is used before it is created", used[i]->kind, used[i]->n);
	}
	for (const char *p = strchr(op->path, '{'); p; p = strchr(p + 1, '{')) {
		struct handle h;
		parse_template(p, &h);
		if (!is_defined(d, h))
			return fail(e, "handle %c%d is used before it is created", h.kind, h.n);
	}
	if (op->kind == OP_LINK_ADD && (op->opt[0] == 1) != (op->dev[1][0] != '\0'))
		return fail(e, "a veth needs peer=NAME, and only a veth has a peer");
	if (op->kind == OP_LINK_ADD && op->peer_in.kind && op->opt[0] != 1)
		return fail(e, "peer_in= is for a veth's peer");
	if (op->kind == OP_EXIT && op->actor.kind == 'p' && op->actor.n == 1)
		return fail(e, "p1 is the sandbox init and cannot exit");
	if (op->ret.kind) {
		if (is_defined(d, op->ret))
			return fail(e, "handle %c%d is created twice", op->ret.kind, op->ret.n);
		d->seen[kind_index(op->ret.kind)][op->ret.n] = 1;
	}
	return 0;
}

/*
 * program.py splits lines with str.splitlines() and words with str.split(), which know more
 * line breaks and blanks than '\n' and ' ': the text is first rewritten, byte for byte in
 * length, so that every line break is '\n' and every other blank is ' ' (the UTF-8 ones
 * included).  No valid word contains any of them, so this changes no accepted program.
 */
static void normalise_blanks(char *s, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i], c1 = i + 1 < len ? s[i + 1] : 0,
			      c2 = i + 2 < len ? s[i + 2] : 0;
		if (c == '\r')
			s[i] = c1 == '\n' ? ' ' : '\n';
		else if (c == 0x0b || c == 0x0c || (c >= 0x1c && c <= 0x1e))
			s[i] = '\n';
		else if (c == '\t' || c == 0x1f)
			s[i] = ' ';
		else if (c == 0xc2 && (c1 == 0x85 || c1 == 0xa0)) {             /* NEL, NBSP */
			s[i] = c1 == 0x85 ? '\n' : ' ';
			s[++i] = ' ';
		} else if ((c == 0xe2 && c1 == 0x80 && (c2 <= 0x8a || c2 == 0xa8 || c2 == 0xa9 || c2 == 0xaf)) ||
			   (c == 0xe2 && c1 == 0x81 && c2 == 0x9f) || (c == 0xe1 && c1 == 0x9a && c2 == 0x80) ||
			   (c == 0xe3 && c1 == 0x80 && c2 == 0x80)) {
			if (c2 < 0x80)
				continue;       /* not a UTF-8 sequence */
			s[i] = c == 0xe2 && c1 == 0x80 && (c2 == 0xa8 || c2 == 0xa9) ? '\n' : ' ';
			s[++i] = ' ';
			s[++i] = ' ';
		}
	}
}

static int parse_program(const char *text, size_t len, struct program *prog, struct parse_error *e)
{
	static char copy[MAX_TEXT + 1];
	struct defined d;
	memset(&d, 0, sizeof d);
	d.seen[0][1] = 1;
	prog->nops = 0;
	if (len > MAX_TEXT)
		return fail(e, "program text exceeds %d bytes", MAX_TEXT);
	memcpy(copy, text, len);
	normalise_blanks(copy, len);
	for (size_t pos = 0, lineno = 1; pos < len; lineno++) {
		char *line = copy + pos, *nl = memchr(line, '\n', len - pos);
		size_t n = nl ? (size_t)(nl - line) : len - pos;
		pos += n + 1;
		line[n] = '\0';                 /* the '\n', or the byte after the text */
		char *comment = memchr(line, '#', n);
		if (comment)
			*comment = '\0';
		n = comment ? (size_t)(comment - line) : n;
		if (memchr(line, '\0', n))      /* a NUL in a comment is fine, as in program.py */
			return fail(e, "line %zu: contains a NUL byte", lineno);
		if (line[strspn(line, " ")] == '\0')
			continue;
		if (prog->nops == MAX_OPS)
			return fail(e, "program has more than %d ops", MAX_OPS);
		struct op *op = &prog->ops[prog->nops];
		struct parse_error why;
		if (parse_line(line, op, &why) < 0 || check_handles(op, &d, &why) < 0)
			return fail(e, "line %zu: %s", lineno, why.msg);
		prog->nops++;
	}
	return 0;
}

/* ---- actors ------------------------------------------------------------------------------ */

/* A command from the controller to an actor (both sides are this binary). */
struct cmd {
	enum op_kind kind;
	int num;                  /* fd number, pid, uid/gid, the new task's handle number, lazy */
	int flag;                 /* spawn: newpid; open: rw; link_add: veth */
	char path[PATH_CAP];
	char data[DATA_CAP];      /* mount options; write: the bytes to write */
	char name[IFNAMSIZ];      /* link ops: the device */
	char name2[IFNAMSIZ];     /* link_rename: the new name; link_add: the veth peer */
};

/* The calling task's view of itself: its channel, and whether it is a thread handle. */
struct actor {
	int ch;
	int is_thread;
};

/* Sends the actor's hello: its NSpid list from the root-namespace /proc, space separated. */
static void send_hello(int ch)
{
	char status[4096], out[512];
	struct text t = { out, 0, sizeof out, 0 };
	out[0] = '\0';
	if (read_file("/proc/thread-self/status", status, sizeof status) >= 0) {
		const char *line = strstr(status, "\nNSpid:");
		for (const char *p = line ? line + 7 : ""; *p && *p != '\n';) {
			size_t skip = strspn(p, " \t"), digits = strspn(p + skip, "0123456789");
			if (digits == 0)
				break;
			if (t.len)
				text_str(&t, " ");
			text_add(&t, p + skip, digits);
			p += skip + digits;
		}
	}
	send_msg(ch, out, t.len, -1);
}

static void set_comm(char kind, int n)
{
	char name[16];
	snprintf(name, sizeof name, "%c%d", kind, n);
	prctl(PR_SET_NAME, name, 0, 0, 0);
}

/* Ends the actor: a thread closes its channel and exits alone, a process exits whole. */
__attribute__((noreturn))
static void leave(const struct actor *self)
{
	if (self->is_thread) {
		close(self->ch);
		syscall(SYS_exit, 0);
	}
	_exit(0);
}

static void perform(struct actor *self, const struct cmd *c, int passfd, char *out, int *answer);

/* The command loop of every actor; it ends only when the task exits. */
__attribute__((noreturn))
static void serve_actor(struct actor *self)
{
	static __thread struct cmd c;
	static __thread char out[RESULT_CAP];
	for (;;) {
		int passfd, answer = 1;
		ssize_t n = recv_msg(self->ch, &c, sizeof c, &passfd);
		if (n == 0 || (n < 0 && errno != EMSGSIZE))
			leave(self);            /* the controller gave up on this actor */
		if (n != sizeof c) {
			if (passfd >= 0)
				close(passfd);
			put_errno(out, EPROTO);
		} else {
			c.path[PATH_CAP - 1] = c.data[DATA_CAP - 1] = '\0';
			c.name[IFNAMSIZ - 1] = c.name2[IFNAMSIZ - 1] = '\0';
			perform(self, &c, passfd, out, &answer);
		}
		if (answer)
			send_msg(self->ch, out, strlen(out), -1);
	}
}

/* The new process of a spawn: keeps stdio, its channel and the held fds, nothing else. */
static void become_child(struct actor *self, int chan, int n)
{
	move_fd(chan, CHAN_FD);
	close_range(CHAN_FD + 1, HELD_FD_BASE, 0);
	close_range(HELD_FD_BASE + MAX_HANDLES + 1, ~0U, 0);
	self->ch = CHAN_FD;
	self->is_thread = 0;
	set_comm('p', n);
	send_hello(CHAN_FD);
}

/*
 * Makes the calling thread's next fork land in a new pid namespace; returns a pidfd of its
 * own process to restore that afterwards, or -1 with errno set.
 *
 * Why not a raw clone(CLONE_NEWPID): it bypasses glibc's fork, so the child keeps glibc's
 * list of the parent's threads; their stale tids collide with the child's own threads in the
 * new namespace and setuid's broadcast to all threads then loops forever.  Seen with a raw
 * clone: p1 with threads t1 t2 spawns p2 newpid=1, p2 spawns threads t3 t4, setuid p2 hangs.
 * unshare(CLONE_NEWPID) + fork() gives the kernel-side result of clone(CLONE_NEWPID).
 */
static int new_pid_ns_for_children(void)
{
	int self_fd = syscall(SYS_pidfd_open, getpid(), 0);
	if (self_fd < 0)
		return -1;
	if (unshare(CLONE_NEWPID) < 0) {
		int err = errno;
		close(self_fd);
		errno = err;
		return -1;
	}
	return self_fd;
}

static void act_spawn(struct actor *self, const struct cmd *c, int chan, char *out, int *answer)
{
	int restore = -1;
	if (chan < 0) {
		put_errno(out, EPROTO);
		return;
	}
	if (c->flag && (restore = new_pid_ns_for_children()) < 0) {
		put_errno(out, errno);
		close(chan);
		return;
	}
	pid_t pid = fork();
	int err = errno;
	if (pid == 0) {
		become_child(self, chan, c->num);
		*answer = 0;            /* the hello was the child's answer */
		return;
	}
	if (restore >= 0) {
		setns(restore, CLONE_NEWPID);
		close(restore);
	}
	close(chan);
	if (pid < 0)
		put_errno(out, err);
	else
		strcpy(out, "ok");
}

static void *thread_main(void *arg)
{
	int n = (int)(intptr_t)arg;
	struct actor self = { THREAD_CHAN_BASE + n, 1 };
	set_comm('t', n);
	send_hello(self.ch);
	serve_actor(&self);
}

static void act_spawn_thread(const struct cmd *c, int chan, char *out)
{
	int fd = THREAD_CHAN_BASE + c->num;
	pthread_attr_t attr;
	pthread_t thread;
	if (chan < 0) {
		put_errno(out, EPROTO);
		return;
	}
	if (dup3(chan, fd, O_CLOEXEC) < 0) {
		put_errno(out, errno);
		close(chan);
		return;
	}
	close(chan);
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	int err = pthread_create(&thread, &attr, thread_main, (void *)(intptr_t)c->num);
	pthread_attr_destroy(&attr);
	if (err) {
		close(fd);
		put_errno(out, err);
	} else {
		strcpy(out, "ok");
	}
}

static void act_reap(pid_t pid, char *out)
{
	int status;
	pid_t r = waitpid(pid, &status, WNOHANG);
	if (r < 0)
		put_errno(out, errno);
	else
		strcpy(out, r == 0 ? "ok:alive" : "ok");
}

/* On success the new image answers on the process channel (see actor_main). */
static void act_exec(char *out)
{
	char *argv[] = { self_exe, "actor", "3", NULL };
	char *envp[] = { NULL };
	execve(self_exe, argv, envp);
	put_errno(out, errno);
}

static void act_open(const char *path, int target, int rw, char *out)
{
	int fd = open(path, rw ? O_RDWR : O_RDONLY);
	if (fd < 0) {
		put_errno(out, errno);
		return;
	}
	if (fd != target && dup2(fd, target) < 0) {
		int err = errno;
		close(fd);
		put_errno(out, err);
		return;
	}
	if (fd != target)
		close(fd);
	strcpy(out, "ok");
}

static void act_lookup(const char *path, char *out)
{
	struct stat st;
	if (lstat(path, &st) < 0)
		put_errno(out, errno);
	else
		strcpy(out, S_ISDIR(st.st_mode) ? "ok:dir" : S_ISREG(st.st_mode) ? "ok:reg"
			    : S_ISLNK(st.st_mode) ? "ok:lnk" : "ok:other");
}

static void act_readlink(const char *path, char *out)
{
	char target[PATH_MAX + 1];
	ssize_t n = readlink(path, target, PATH_MAX);
	if (n < 0) {
		put_errno(out, errno);
		return;
	}
	target[n] = '\0';
	struct text t = { out, 0, RESULT_CAP, 0 };
	text_str(&t, "ok:");
	text_escaped(&t, target, 0);
	if (t.full)
		put_errno(out, E2BIG);
}

static void act_read(int fd, char *out)
{
	unsigned char buf[READ_SIZE];
	ssize_t n = pread(fd, buf, sizeof buf, 0);
	if (n < 0)
		put_errno(out, errno);
	else
		sprintf(out, "ok:%zd:%016llx", n, fnv1a64(buf, n));
}

static int compare_names(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Joins the sorted names as "ok:a,b,c"; a listing that does not fit is E2BIG. */
static void put_names(const char **names, int count, char *out)
{
	struct text t = { out, 0, RESULT_CAP, 0 };
	qsort(names, count, sizeof *names, compare_names);
	text_str(&t, "ok:");
	for (int i = 0; i < count; i++) {
		if (i)
			text_str(&t, ",");
		text_escaped(&t, names[i], ',');
	}
	if (t.full)
		put_errno(out, E2BIG);
}

/* getdents64 from the current offset to the end; `.` and `..` are left out. */
static void list_dir(int fd, char *out)
{
	static __thread char buf[16384], arena[RESULT_CAP];
	static __thread const char *names[MAX_NAMES];
	size_t used = 0;
	int count = 0;
	for (;;) {
		ssize_t n = getdents64(fd, buf, sizeof buf);
		if (n < 0) {
			put_errno(out, errno);
			return;
		}
		if (n == 0)
			break;
		for (ssize_t off = 0; off < n;) {
			struct dirent64 *d = (struct dirent64 *)(buf + off);
			size_t len = strlen(d->d_name) + 1;
			off += d->d_reclen;
			if (strcmp(d->d_name, ".") == 0 || strcmp(d->d_name, "..") == 0)
				continue;
			if (count == MAX_NAMES || used + len > sizeof arena) {
				put_errno(out, E2BIG);
				return;
			}
			names[count++] = memcpy(arena + used, d->d_name, len);
			used += len;
		}
	}
	put_names(names, count, out);
}

static void act_readdir(const char *path, char *out)
{
	int fd = open(path, O_RDONLY | O_DIRECTORY);
	if (fd < 0) {
		put_errno(out, errno);
		return;
	}
	list_dir(fd, out);
	close(fd);
}

/* fd < 0: a fresh open of the cwd. */
static void act_getdents(int fd, char *out)
{
	int own = fd < 0 ? open(".", O_RDONLY | O_DIRECTORY) : -1;
	if (fd < 0 && own < 0) {
		put_errno(out, errno);
		return;
	}
	if (own >= 0)
		fd = own;
	if (lseek(fd, 0, SEEK_SET) < 0)
		put_errno(out, errno);
	else
		list_dir(fd, out);
	if (own >= 0)
		close(own);
}

static void act_write(int fd, const char *data, char *out)
{
	size_t len = strlen(data);
	ssize_t n = pwrite(fd, data, len, 0);
	if (n < 0)
		put_errno(out, errno);
	else if ((size_t)n == len)
		strcpy(out, "ok");
	else
		sprintf(out, "ok:%zd", n);
}

/* ---- actors: rtnetlink -------------------------------------------------------------------- */

/* One request: header, ifinfomsg, attributes. */
struct nl_request {
	struct nlmsghdr h;
	struct ifinfomsg ifi;
	char attrs[512];
};

static struct rtattr *nl_attr(struct nl_request *r, int type, const void *data, size_t len)
{
	struct rtattr *a = (struct rtattr *)((char *)r + NLMSG_ALIGN(r->h.nlmsg_len));
	a->rta_type = type;
	a->rta_len = RTA_LENGTH(len);
	if (len)
		memcpy(RTA_DATA(a), data, len);
	r->h.nlmsg_len = NLMSG_ALIGN(r->h.nlmsg_len) + RTA_ALIGN(a->rta_len);
	return a;
}

static void nl_str(struct nl_request *r, int type, const char *s)
{
	nl_attr(r, type, s, strlen(s) + 1);
}

/* A nest covers everything added after it until nl_end. */
static void nl_end(struct nl_request *r, struct rtattr *nest)
{
	nest->rta_len = (char *)r + r->h.nlmsg_len - (char *)nest;
}

static void nl_init(struct nl_request *r, int type, int flags)
{
	memset(r, 0, sizeof *r);
	r->h.nlmsg_len = NLMSG_LENGTH(sizeof r->ifi);
	r->h.nlmsg_type = type;
	r->h.nlmsg_flags = NLM_F_REQUEST | flags;
	r->h.nlmsg_seq = 1;
	r->ifi.ifi_family = AF_UNSPEC;
}

/*
 * Sends r on the NETLINK_ROUTE socket sk and reads the answer: 0 for an ack with error 0,
 * a positive errno otherwise.  With index != NULL (an RTM_GETLINK) the answer is the device's
 * RTM_NEWLINK, whose ifi_index is stored there.
 */
static int nl_talk(int sk, struct nl_request *r, int *index)
{
	static __thread char buf[16384];
	struct sockaddr_nl kernel = { .nl_family = AF_NETLINK };
	if (sendto(sk, r, r->h.nlmsg_len, 0, (struct sockaddr *)&kernel, sizeof kernel) < 0)
		return errno;
	for (;;) {
		ssize_t n = recv(sk, buf, sizeof buf, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return errno;
		if (n == 0)
			return EPROTO;
		for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)n); h = NLMSG_NEXT(h, n)) {
			if (h->nlmsg_seq != r->h.nlmsg_seq)
				continue;
			if (h->nlmsg_type == NLMSG_ERROR) {
				const struct nlmsgerr *err = NLMSG_DATA(h);
				if (h->nlmsg_len < NLMSG_LENGTH(sizeof *err))
					return EPROTO;
				return err->error ? -err->error : (index ? EPROTO : 0);
			}
			if (index && h->nlmsg_type == RTM_NEWLINK &&
			    h->nlmsg_len >= NLMSG_LENGTH(sizeof(struct ifinfomsg))) {
				*index = ((const struct ifinfomsg *)NLMSG_DATA(h))->ifi_index;
				return 0;
			}
		}
	}
}

/* The index of device name in the socket's network namespace, or -errno (ENODEV). */
static int nl_index(int sk, const char *name)
{
	struct nl_request r;
	int index = 0;
	nl_init(&r, RTM_GETLINK, 0);
	nl_str(&r, IFLA_IFNAME, name);
	int err = nl_talk(sk, &r, &index);
	return err ? -err : index;
}

/*
 * The link ops.  The socket is opened by the actor's own thread, so it belongs to that thread's
 * network namespace; nsfd is the namespace fd the controller passed (-1: none).
 */
static void act_link(const struct cmd *c, int nsfd, char *out)
{
	struct nl_request r;
	struct rtattr *info, *data, *peer;
	int err = 0;
	if (c->kind == OP_LINK_SET_NETNS && nsfd < 0) {
		put_errno(out, EPROTO);
		return;
	}
	int sk = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
	if (sk < 0) {
		put_errno(out, errno);
		return;
	}
	switch (c->kind) {
	case OP_LINK_ADD:
		nl_init(&r, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK);
		nl_str(&r, IFLA_IFNAME, c->name);
		info = nl_attr(&r, IFLA_LINKINFO, NULL, 0);
		nl_str(&r, IFLA_INFO_KIND, c->flag ? "veth" : "dummy");
		if (c->flag) {
			data = nl_attr(&r, IFLA_INFO_DATA, NULL, 0);
			struct ifinfomsg peer_ifi = { .ifi_family = AF_UNSPEC };
			peer = nl_attr(&r, VETH_INFO_PEER, &peer_ifi, sizeof peer_ifi);
			nl_str(&r, IFLA_IFNAME, c->name2);
			if (nsfd >= 0)
				nl_attr(&r, IFLA_NET_NS_FD, &(uint32_t){ nsfd }, sizeof(uint32_t));
			nl_end(&r, peer);
			nl_end(&r, data);
		}
		nl_end(&r, info);
		err = nl_talk(sk, &r, NULL);
		break;
	case OP_LINK_DEL:
		nl_init(&r, RTM_DELLINK, NLM_F_ACK);
		nl_str(&r, IFLA_IFNAME, c->name);
		err = nl_talk(sk, &r, NULL);
		break;
	default: {          /* by index: rename, set_netns, up, down */
		int index = nl_index(sk, c->name);
		if (index <= 0) {
			err = index < 0 ? -index : ENODEV;
			break;
		}
		nl_init(&r, RTM_NEWLINK, NLM_F_ACK);
		r.ifi.ifi_index = index;
		if (c->kind == OP_LINK_RENAME)
			nl_str(&r, IFLA_IFNAME, c->name2);
		else if (c->kind == OP_LINK_SET_NETNS)
			nl_attr(&r, IFLA_NET_NS_FD, &(uint32_t){ nsfd }, sizeof(uint32_t));
		else {
			r.ifi.ifi_change = IFF_UP;
			r.ifi.ifi_flags = c->kind == OP_LINK_UP ? IFF_UP : 0;
		}
		err = nl_talk(sk, &r, NULL);
		break;
	}
	}
	close(sk);
	if (err)
		put_errno(out, err);
	else
		strcpy(out, "ok");
}

static void act_setns_net(int nsfd, char *out)
{
	if (nsfd < 0)
		put_errno(out, EPROTO);
	else
		put_status(out, setns(nsfd, CLONE_NEWNET));
}

/* The ops that take an fd from the controller with the command. */
static int takes_fd(enum op_kind kind)
{
	return kind == OP_SPAWN || kind == OP_SPAWN_THREAD || kind == OP_SETNS_NET ||
	       kind == OP_LINK_ADD || kind == OP_LINK_SET_NETNS;
}

/* Executes one command; *answer = 0 when the caller must not reply (a spawn's child). */
static void perform(struct actor *self, const struct cmd *c, int passfd, char *out, int *answer)
{
	if (passfd >= 0 && !takes_fd(c->kind)) {
		close(passfd);
		passfd = -1;
	}
	switch (c->kind) {
	case OP_SPAWN: act_spawn(self, c, passfd, out, answer); break;
	case OP_SPAWN_THREAD: act_spawn_thread(c, passfd, out); break;
	case OP_EXIT: leave(self);
	case OP_REAP: act_reap(c->num, out); break;
	case OP_EXEC: act_exec(out); break;
	case OP_SETUID: put_status(out, setuid(c->num)); break;
	case OP_SETGID: put_status(out, setgid(c->num)); break;
	case OP_MOUNT_PROC: put_status(out, mount("proc", c->path, "proc", 0, c->data)); break;
	case OP_UMOUNT: put_status(out, umount2(c->path, c->num ? MNT_DETACH : 0)); break;
	case OP_OPEN: act_open(c->path, c->num, c->flag, out); break;
	case OP_CLOSE: put_status(out, close(c->num)); break;
	case OP_CHDIR: put_status(out, chdir(c->path)); break;
	case OP_LOOKUP: act_lookup(c->path, out); break;
	case OP_READDIR: act_readdir(c->path, out); break;
	case OP_READLINK: act_readlink(c->path, out); break;
	case OP_READ: act_read(c->num, out); break;
	case OP_GETDENTS: act_getdents(c->num, out); break;
	case OP_WRITE: act_write(c->num, c->data, out); break;
	case OP_UNSHARE_NET: put_status(out, unshare(CLONE_NEWNET)); break;
	case OP_SETNS_NET: act_setns_net(passfd, out); break;
	case OP_LINK_ADD:
	case OP_LINK_DEL:
	case OP_LINK_RENAME:
	case OP_LINK_SET_NETNS:
	case OP_LINK_UP:
	case OP_LINK_DOWN: act_link(c, passfd, out); break;
	default: put_errno(out, EPROTO); break;
	}
	if (passfd >= 0 && c->kind != OP_SPAWN && c->kind != OP_SPAWN_THREAD)
		close(passfd);
}

static void redirect_stdio(void)
{
	int fd = open("/dev/null", O_RDWR);
	for (int i = 0; i < 3 && fd >= 0; i++)
		dup2(fd, i);
	if (fd > 2)
		close(fd);
}

/* p1, the clone() child of the controller: init of the sandbox's fresh namespaces. */
__attribute__((noreturn))
static void become_sandbox_init(int chan)
{
	struct actor self = { CHAN_FD, 0 };
	/* Keep the program's mounts from propagating into the controller's namespace. */
	mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL);
	redirect_stdio();
	move_fd(chan, CHAN_FD);
	close_range(CHAN_FD + 1, ~0U, 0);
	set_comm('p', 1);
	send_hello(CHAN_FD);
	serve_actor(&self);
}

/* `agent actor <fd>`: the new image after the exec op; comm is what exec made it. */
static int actor_main(const char *exe, const char *fd)
{
	struct actor self = { atoi(fd), 0 };
	snprintf(self_exe, sizeof self_exe, "%s", exe);
	send_msg(self.ch, "ok", 2, -1);
	serve_actor(&self);
}

/* ---- controller: one sandbox per program ------------------------------------------------- */

struct task {
	int created;                /* its hello arrived: nspid is valid */
	int chan;                   /* the controller's end; -1: dead or never created */
	int ns;                     /* index into sandbox.ns_* */
	int proc;                   /* number of the process handle the task belongs to */
	int nlevels;
	long nspid[MAX_LEVELS];     /* [0] controller's namespace, [1] sandbox's, ... */
	int flushfd;                /* a thread's /proc/<tgid>/task/<tid> in our /proc, O_PATH */
};

struct sandbox {
	pid_t init;
	struct task p[MAX_HANDLES + 1], t[MAX_HANDLES + 1];
	int nns, ns_parent[MAX_HANDLES + 2], ns_depth[MAX_HANDLES + 2];
	int mount_ns[MAX_HANDLES + 1];
};

static struct task *task_of(struct sandbox *sb, struct handle h)
{
	return h.kind == 't' ? &sb->t[h.n] : &sb->p[h.n];
}

/* The task at the other end of channel chan has exited (its end closed), now. */
static int hung_up(int chan)
{
	struct pollfd p = { .fd = chan, .events = POLLIN };
	return poll(&p, 1, 0) == 1 && (p.revents & (POLLHUP | POLLERR));
}

static void drop_channel(struct task *t)
{
	if (t->chan >= 0)
		close(t->chan);
	t->chan = -1;
}

/* The task's pid in namespace ns, INVISIBLE_PID when ns is not its own or an ancestor. */
static long pid_in_ns(const struct sandbox *sb, const struct task *t, int ns)
{
	if (!t->created)
		return INVISIBLE_PID;
	for (int x = t->ns; x >= 0; x = sb->ns_parent[x]) {
		if (x == ns)
			return sb->ns_depth[ns] < t->nlevels ? t->nspid[sb->ns_depth[ns]] : INVISIBLE_PID;
	}
	return INVISIBLE_PID;
}

/* Replaces the templates of a (validated) path; -1 when the result does not fit. */
static int resolve_path(struct sandbox *sb, const char *tmpl, char *out)
{
	struct text t = { out, 0, PATH_CAP, 0 };
	int ns = 0;
	out[0] = '\0';
	for (const char *p = tmpl; *p;) {
		struct handle h;
		const char *next = *p == '{' ? parse_template(p, &h) : NULL;
		if (!next) {
			text_add(&t, p++, 1);
			continue;
		}
		if (h.kind == 'm') {
			text_printf(&t, "/mnt/m%d", h.n);
			ns = sb->mount_ns[h.n];
		} else if (h.kind == 'f') {
			text_printf(&t, "%d", HELD_FD_BASE + h.n);
		} else {
			text_printf(&t, "%ld", pid_in_ns(sb, task_of(sb, h), ns));
		}
		p = next;
	}
	return t.full ? -1 : 0;
}

/*
 * Waits for the next message on any of the channels in chans[] (-1 entries are skipped) until
 * the deadline.  Returns its length with *which set, 0 with *which set when that channel hit
 * EOF, -1 on timeout or when no channel is left.
 */
static ssize_t await_msg(const int *chans, int n, int *which, char *buf, size_t cap, long long deadline)
{
	struct pollfd pfd[2];
	for (;;) {
		int live = 0;
		for (int i = 0; i < n; i++) {
			pfd[i] = (struct pollfd){ chans[i], POLLIN, 0 };
			live += chans[i] >= 0;
		}
		long long left = (deadline - now_ns()) / 1000000;
		if (!live || left < 0)
			return -1;
		if (poll(pfd, n, left + 1) <= 0)
			continue;
		for (int i = 0; i < n; i++) {
			if (chans[i] < 0 || !pfd[i].revents)
				continue;
			*which = i;
			ssize_t len = recv_msg(chans[i], buf, cap - 1, NULL);
			if (len < 0)
				len = 0;        /* a broken channel is as dead as a closed one */
			buf[len] = '\0';
			return len;
		}
	}
}

/* Sends a command to an actor and waits for its answer, the op's result. */
static void request(struct task *a, const struct cmd *c, int passfd, char *result)
{
	int which;
	if (a->chan < 0 || send_msg(a->chan, c, sizeof *c, passfd) < 0) {
		drop_channel(a);
		strcpy(result, "dead");
		return;
	}
	ssize_t n = await_msg(&a->chan, 1, &which, result, RESULT_CAP, now_ns() + OP_DEADLINE_NS);
	if (n <= 0) {
		drop_channel(a);        /* gone, or stuck: later ops on it answer `dead` */
		strcpy(result, n == 0 ? "dead" : "ETIMEDOUT");
	}
}

/* Reads a new task's hello (its NSpid); returns 0, or -1 with the op's result set. */
static int await_hello(struct task *t, char *result)
{
	char buf[512];
	int which;
	ssize_t n = await_msg(&t->chan, 1, &which, buf, sizeof buf, now_ns() + OP_DEADLINE_NS);
	if (n <= 0) {
		strcpy(result, n == 0 ? "dead" : "ETIMEDOUT");
		return -1;
	}
	t->nlevels = 0;
	for (char *p = buf, *end; *p && t->nlevels < MAX_LEVELS; p = end) {
		t->nspid[t->nlevels++] = strtol(p, &end, 10);
		if (end == p)
			break;
	}
	if (t->nlevels < 2) {
		put_errno(result, EPROTO);
		return -1;
	}
	t->created = 1;
	return 0;
}

/* "ok:" and the task's NSpid without the controller's namespace, '.'-joined. */
static void put_spawned(const struct task *t, char *result)
{
	struct text txt = { result, 0, RESULT_CAP, 0 };
	text_str(&txt, "ok:");
	for (int i = 1; i < t->nlevels; i++)
		text_printf(&txt, i > 1 ? ".%ld" : "%ld", t->nspid[i]);
}

/* Gives actor a the new task's channel end with the command, then waits for the hello. */
static void start_task(struct task *a, struct task *child, const struct cmd *c, char *result)
{
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
		put_errno(result, errno);
		return;
	}
	request(a, c, sv[1], result);
	close(sv[1]);
	if (strcmp(result, "ok") != 0) {
		close(sv[0]);
		return;
	}
	child->chan = sv[0];
	if (await_hello(child, result) < 0)
		drop_channel(child);
	else
		put_spawned(child, result);
}

static void ctl_spawn(struct sandbox *sb, const struct op *op, char *result)
{
	struct task *a = task_of(sb, op->actor), *child = &sb->p[op->ret.n];
	struct cmd c = { .kind = OP_SPAWN, .num = op->ret.n, .flag = op->opt[0] };
	child->proc = op->ret.n;
	child->ns = a->ns;
	if (c.flag) {               /* the namespace tree follows the program, even on failure */
		child->ns = sb->nns++;
		sb->ns_parent[child->ns] = a->ns;
		sb->ns_depth[child->ns] = sb->ns_depth[a->ns] + 1;
	}
	start_task(a, child, &c, result);
}

static void ctl_spawn_thread(struct sandbox *sb, const struct op *op, char *result)
{
	struct task *a = task_of(sb, op->actor), *child = &sb->t[op->ret.n];
	struct cmd c = { .kind = OP_SPAWN_THREAD, .num = op->ret.n };
	char path[64];
	child->proc = a->proc;
	child->ns = a->ns;
	start_task(a, child, &c, result);
	if (child->chan >= 0) {
		snprintf(path, sizeof path, "/proc/%ld/task/%ld", sb->p[a->proc].nspid[0], child->nspid[0]);
		child->flushfd = open(path, O_PATH | O_CLOEXEC);
	}
}

/*
 * A thread releases itself (exit_notify, or killed by exit_group or de_thread): release_task
 * unhashes its pid, then calls proc_flush_pid, which invalidates the dentries of the pid's
 * inodes newest first.  The thread is gone from /proc before the flush is done, so a program
 * looking right away could still find its dentries hashed (seen once in ~10,000 programs).
 * Our own dentry, pinned since the spawn, is the oldest: once d_path calls it deleted, every
 * dentry of the program's mounts has been invalidated.  Bounded: a kernel that never flushes
 * (the zoo's stale_tid) costs the wait, and the program's ops show the rest.
 */
static void await_flush(struct task *t)
{
	char self[64], target[PATH_CAP];
	long long deadline = now_ns() + FLUSH_DEADLINE_NS;
	if (t->flushfd < 0)
		return;
	snprintf(self, sizeof self, "/proc/self/fd/%d", t->flushfd);
	for (int polls = 0;; ) {
		ssize_t n = readlink(self, target, sizeof target - 1);
		target[n > 0 ? n : 0] = '\0';
		if (n < 0 || (n > 10 && strcmp(target + n - 10, " (deleted)") == 0) || now_ns() > deadline)
			break;
		pause_briefly(&polls);
	}
	close(t->flushfd);
	t->flushfd = -1;
}

/*
 * Waits out any release_task() still inside its tasklist_lock write section.  The polls below
 * see a task gone once detach_pid() ran, but __unhash_process() unlinks the thread lists a
 * moment later under the same lock; a readdir of /proc/<pid>/task in that window stops at the
 * half-released thread and misses the live ones after it (next_tid: !pid_alive).  do_wait()
 * takes tasklist_lock for reading, so a no-op waitid() returns only after that section ends.
 */
static void tasklist_barrier(void)
{
	siginfo_t info;
	waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT);
}

/* Polls cond(arg) until it holds or the deadline passes; 0 when it held. */
static int poll_until(int (*cond)(const void *), const void *arg, long long deadline)
{
	for (int polls = 0; !cond(arg); ) {
		if (now_ns() > deadline)
			return -1;
		pause_briefly(&polls);
	}
	tasklist_barrier();
	return 0;
}

/* A process is done exiting: gone, or a zombie whose task list holds only the leader. */
static int process_exited(const void *arg)
{
	pid_t pid = *(const pid_t *)arg;
	char path[64], buf[1024], leader[16];
	snprintf(path, sizeof path, "/proc/%d/stat", pid);
	if (read_file(path, buf, sizeof buf) < 0)
		return errno == ENOENT || errno == ESRCH;
	const char *paren = strrchr(buf, ')');
	if (!paren || (paren[2] != 'Z' && paren[2] != 'X'))
		return 0;
	snprintf(path, sizeof path, "/proc/%d/task", pid);
	DIR *dir = opendir(path);
	if (!dir)
		return errno == ENOENT || errno == ESRCH;
	int others = 0;
	snprintf(leader, sizeof leader, "%d", pid);
	for (struct dirent *d; (d = readdir(dir));)
		others += d->d_name[0] != '.' && strcmp(d->d_name, leader) != 0;
	closedir(dir);
	return others == 0;
}

/*
 * A thread is done exiting once its thread group's task list no longer has it.  The list comes
 * from the live thread list (proc_task_readdir), not from a lookup, so a kernel whose dentries
 * for dead tids stay valid (a bug procfuzz hunts) cannot make this wait hang.
 */
struct thread_id { pid_t tgid; long tid; };

static int thread_exited(const void *arg)
{
	const struct thread_id *id = arg;
	char path[64], name[24];
	snprintf(path, sizeof path, "/proc/%d/task", id->tgid);
	snprintf(name, sizeof name, "%ld", id->tid);
	DIR *dir = opendir(path);
	if (!dir)
		return errno == ENOENT || errno == ESRCH;
	int listed = 0;
	for (struct dirent *d; !listed && (d = readdir(dir));)
		listed = strcmp(d->d_name, name) == 0;
	closedir(dir);
	return !listed;
}

/* Every thread of process pn is gone with it (exit_group or exec). */
static void drop_threads_of(struct sandbox *sb, int pn)
{
	for (int i = 1; i <= MAX_HANDLES; i++) {
		if (sb->t[i].proc == pn) {
			drop_channel(&sb->t[i]);
			await_flush(&sb->t[i]);
		}
	}
}

static void ctl_exit(struct sandbox *sb, const struct op *op, char *result)
{
	struct task *a = task_of(sb, op->actor);
	struct cmd c = { .kind = OP_EXIT };
	int done;
	if (a->chan < 0 || send_msg(a->chan, &c, sizeof c, -1) < 0) {
		drop_channel(a);
		strcpy(result, "dead");
		return;
	}
	pid_t tgid = sb->p[a->proc].nspid[0];
	if (op->actor.kind == 'p') {
		done = poll_until(process_exited, &tgid, now_ns() + OP_DEADLINE_NS);
		drop_threads_of(sb, a->proc);
	} else {
		struct thread_id id = { tgid, a->nspid[0] };
		done = poll_until(thread_exited, &id, now_ns() + OP_DEADLINE_NS);
		if (done == 0)
			await_flush(a);
	}
	drop_channel(a);
	strcpy(result, done == 0 ? "ok" : "ETIMEDOUT");
}

/*
 * exec from a thread answers twice over: an errno from the thread on its own channel when
 * execve fails, or `ok` from the new image on the process channel.
 */
static void ctl_exec(struct sandbox *sb, const struct op *op, char *result)
{
	struct task *a = task_of(sb, op->actor), *proc = &sb->p[a->proc];
	struct cmd c = { .kind = OP_EXEC };
	struct task *from[2] = { a, proc };
	int chans[2] = { a->chan, a == proc ? -1 : proc->chan }, which;
	long long deadline = now_ns() + OP_DEADLINE_NS;
	if (a->chan < 0 || send_msg(a->chan, &c, sizeof c, -1) < 0) {
		drop_channel(a);
		strcpy(result, "dead");
		return;
	}
	for (;;) {
		ssize_t n = await_msg(chans, 2, &which, result, RESULT_CAP, deadline);
		if (n < 0) {
			strcpy(result, chans[0] < 0 && chans[1] < 0 ? "dead" : "ETIMEDOUT");
			drop_channel(a);
			return;
		}
		if (n > 0)
			break;
		drop_channel(from[which]);
		chans[which] = -1;
	}
	if (strcmp(result, "ok") == 0)
		drop_threads_of(sb, a->proc);   /* de_thread killed them; a thread actor is gone too */
	tasklist_barrier();                     /* the threads de_thread released */
}

static void ctl_drop_caches(char *result)
{
	int fd = open("/proc/sys/vm/drop_caches", O_WRONLY | O_CLOEXEC);
	if (fd < 0) {
		put_errno(result, errno);
		return;
	}
	put_status(result, write(fd, "2", 1) < 0 ? -1 : 0);
	close(fd);
}

/*
 * Opens the network namespace of task h in the controller's (root) /proc, for passing to an
 * actor; -1 with *err set.  A task that never came alive has none: ENOENT.
 */
static int open_netns_of(struct sandbox *sb, struct handle h, int *err)
{
	struct task *t = task_of(sb, h);
	char path[64];
	if (!t->created) {
		*err = ENOENT;
		return -1;
	}
	snprintf(path, sizeof path, "/proc/%ld/ns/net", t->nspid[0]);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	*err = errno;
	return fd;
}

/* The ops that are one command to one actor. */
static void ctl_simple(struct sandbox *sb, const struct op *op, char *result)
{
	struct task *a = task_of(sb, op->actor);
	struct cmd c = { .kind = op->kind };
	const struct handle *netns_of = NULL;      /* whose network namespace goes with c */
	int nsfd = -1, err;
	switch (op->kind) {
	case OP_REAP:
		c.num = pid_in_ns(sb, task_of(sb, op->target), a->ns);
		break;
	case OP_SETUID:
	case OP_SETGID:
		c.num = op->id;
		break;
	case OP_MOUNT_PROC:
		sb->mount_ns[op->ret.n] = a->ns;
		snprintf(c.path, sizeof c.path, "/mnt/m%d", op->ret.n);
		snprintf(c.data, sizeof c.data, "hidepid=%s%s", OPT_HIDEPID.choices[op->opt[0]],
			 op->opt[1] ? ",subset=pid" : "");
		break;
	case OP_UMOUNT:
		snprintf(c.path, sizeof c.path, "/mnt/m%d", op->target.n);
		c.num = op->opt[0];
		break;
	case OP_OPEN:
		c.num = HELD_FD_BASE + op->ret.n;
		c.flag = op->opt[0];
		break;
	case OP_CLOSE:
	case OP_READ:
	case OP_GETDENTS:
		c.num = op->target.n ? HELD_FD_BASE + op->target.n : -1;
		break;
	case OP_WRITE:
		c.num = HELD_FD_BASE + op->target.n;
		snprintf(c.data, sizeof c.data, "%s\n", op->value);
		break;
	case OP_SETNS_NET:
		netns_of = &op->target;
		break;
	case OP_LINK_ADD:
	case OP_LINK_DEL:
	case OP_LINK_RENAME:
	case OP_LINK_SET_NETNS:
	case OP_LINK_UP:
	case OP_LINK_DOWN:
		strcpy(c.name, op->dev[0]);
		strcpy(c.name2, op->dev[1]);
		c.flag = op->kind == OP_LINK_ADD && op->opt[0] == 1;     /* veth */
		if (op->kind == OP_LINK_SET_NETNS)
			netns_of = &op->target;
		else if (c.flag && op->peer_in.kind)
			netns_of = &op->peer_in;
		break;
	default:
		break;
	}
	if (op->path[0] && resolve_path(sb, op->path, c.path) < 0) {
		put_errno(result, ENAMETOOLONG);
		return;
	}
	/* A dead actor does nothing, so its op is `dead` before the namespace is looked at; one
	 * killed since its last op (by the exit of its pid namespace's init) has hung up. */
	if (netns_of && a->chan >= 0 && hung_up(a->chan))
		drop_channel(a);
	if (netns_of && a->chan >= 0 && (nsfd = open_netns_of(sb, *netns_of, &err)) < 0) {
		put_errno(result, err);
		return;
	}
	request(a, &c, nsfd, result);
	if (nsfd >= 0)
		close(nsfd);
}

static void run_op(struct sandbox *sb, const struct op *op, char *result)
{
	switch (op->kind) {
	case OP_SPAWN: ctl_spawn(sb, op, result); break;
	case OP_SPAWN_THREAD: ctl_spawn_thread(sb, op, result); break;
	case OP_EXIT: ctl_exit(sb, op, result); break;
	case OP_EXEC: ctl_exec(sb, op, result); break;
	case OP_DROP_CACHES: ctl_drop_caches(result); break;
	default: ctl_simple(sb, op, result); break;
	}
}

static void init_sandbox(struct sandbox *sb)
{
	memset(sb, 0, sizeof *sb);
	for (int i = 0; i <= MAX_HANDLES; i++)
		sb->p[i].chan = sb->t[i].chan = sb->p[i].flushfd = sb->t[i].flushfd = -1;
	sb->init = -1;
	sb->nns = 1;                    /* namespace 0: the sandbox's, one level below ours */
	sb->ns_parent[0] = -1;
	sb->ns_depth[0] = 1;
}

/* Clones p1 into fresh namespaces and waits for its hello; -1 with err set on failure. */
static int start_sandbox(struct sandbox *sb, char *err)
{
	int sv[2];
	init_sandbox(sb);
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
		snprintf(err, RESULT_CAP, "sandbox: socketpair: %s", strerror(errno));
		return -1;
	}
	/* The controller is single-threaded, so a raw fork-like clone is safe here. */
	pid_t pid = syscall(SYS_clone, SANDBOX_FLAGS | SIGCHLD, 0, 0, 0, 0);
	if (pid == 0)
		become_sandbox_init(sv[1]);
	close(sv[1]);
	if (pid < 0) {
		snprintf(err, RESULT_CAP, "sandbox: clone: %s", strerror(errno));
		close(sv[0]);
		return -1;
	}
	sb->init = pid;
	sb->p[1].chan = sv[0];
	sb->p[1].proc = 1;
	if (await_hello(&sb->p[1], err) < 0) {
		snprintf(err, RESULT_CAP, "sandbox: p1 sent no hello");
		return -1;
	}
	return 0;
}

static int init_reaped(const void *arg)
{
	pid_t pid = *(const pid_t *)arg;
	return waitpid(pid, NULL, WNOHANG) == pid;
}

/*
 * Kills p1 (its pid namespace dies with it) and closes every channel; -1 on timeout.  Waits on
 * a pidfd, which becomes readable once p1 is a zombie (after zap_pid_ns_processes has reaped
 * the namespace), instead of polling waitpid.
 */
static int teardown(struct sandbox *sb)
{
	int rc = 0;
	if (sb->init > 0) {
		int pidfd = syscall(SYS_pidfd_open, sb->init, 0);
		kill(sb->init, SIGKILL);
		if (pidfd >= 0) {
			struct pollfd pfd = { pidfd, POLLIN, 0 };
			int ready = poll(&pfd, 1, TEARDOWN_DEADLINE_NS / 1000000) == 1;
			rc = ready && waitpid(sb->init, NULL, 0) == sb->init ? 0 : -1;
			close(pidfd);
		} else {
			rc = poll_until(init_reaped, &sb->init, now_ns() + TEARDOWN_DEADLINE_NS);
		}
	}
	for (int i = 0; i <= MAX_HANDLES; i++) {
		drop_channel(&sb->p[i]);
		drop_channel(&sb->t[i]);
		if (sb->t[i].flushfd >= 0)
			close(sb->t[i].flushfd);
	}
	return rc;
}

/* ---- controller: frames ------------------------------------------------------------------ */

struct link {
	int in, out;
	int stdio;                  /* `serve -`: EOF on input ends the agent */
	int in_garbage;             /* skipping bytes; reported once per run of garbage */
	unsigned char *buf;
	size_t len, cap;
};

static void send_frame(struct link *l, char type, const void *payload, size_t len)
{
	unsigned char head[8] = { 'P', 'F', 'Z', (unsigned char)type,
				  len & 0xff, (len >> 8) & 0xff, (len >> 16) & 0xff, (len >> 24) & 0xff };
	if (write_all(l->out, head, sizeof head) == 0)
		write_all(l->out, payload, len);
}

__attribute__((format(printf, 2, 3)))
static void send_error(struct link *l, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	for (char *p = msg; *p; p++) {
		if (*p < 0x20 || *p > 0x7e)
			*p = '?';       /* the message may quote program text; the host wants ASCII */
	}
	send_frame(l, 'E', msg, strlen(msg));
}

static void consume(struct link *l, size_t n)
{
	memmove(l->buf, l->buf + n, l->len - n);
	l->len -= n;
}

/* Drops bytes up to the next "PFZ" (keeping a possible partial "P"/"PF" at the end). */
static void skip_garbage(struct link *l)
{
	if (!l->in_garbage)
		send_error(l, "bad frame magic; resynchronising");
	l->in_garbage = 1;
	size_t i = 1;
	for (; i < l->len; i++) {
		size_t n = l->len - i < 3 ? l->len - i : 3;
		if (memcmp(l->buf + i, "PFZ", n) == 0)
			break;
	}
	consume(l, i);
}

/* Reads more input; -1 when the input is over for good. */
static int fill(struct link *l)
{
	ssize_t n = read(l->in, l->buf + l->len, l->cap - l->len);
	if (n > 0) {
		l->len += n;
		return 0;
	}
	if (n < 0 && errno == EINTR)
		return 0;
	if (l->stdio)
		return -1;
	/* A serial device should never end; as pid 1 the agent must not exit, so retry. */
	struct timespec ts = { 0, 10000000 };
	nanosleep(&ts, NULL);
	return 0;
}

/* Waits until the buffer starts with a whole valid frame; -1 at the end of input. */
static int next_frame(struct link *l, char *type, uint32_t *len)
{
	for (;;) {
		if (l->len >= 3 && memcmp(l->buf, "PFZ", 3) != 0) {
			skip_garbage(l);
			continue;
		}
		if (l->len >= 8) {
			char t = l->buf[3];
			uint32_t n = l->buf[4] | l->buf[5] << 8 | l->buf[6] << 16 | (uint32_t)l->buf[7] << 24;
			if ((t != 'H' && t != 'P' && t != 'L' && t != 'C') || n > MAX_PAYLOAD) {
				send_error(l, n > MAX_PAYLOAD ? "frame payload of %u bytes exceeds 1 MiB"
							     : "unknown frame type (payload %u bytes)", n);
				l->in_garbage = 1;
				consume(l, 1);
				continue;
			}
			if (l->len >= 8 + (size_t)n) {
				*type = t;
				*len = n;
				l->in_garbage = 0;
				return 0;
			}
		}
		if (fill(l) < 0)
			return -1;
	}
}

static void send_hello_frame(struct link *l)
{
	struct utsname u;
	char msg[512];
	if (uname(&u) < 0)
		strcpy(u.release, "unknown");
	snprintf(msg, sizeof msg, "procfuzz-agent 1 %s", u.release);
	send_frame(l, 'H', msg, strlen(msg));
}

static long long elapsed_us(long long from, long long to)
{
	return (to - from) / 1000;
}

/*
 * Leak oracle (fuzz/leaks.py): after teardown, the active object counts of a fixed set of slab
 * caches (the kernel runs with slab_nomerge, so each has its own line in /proc/slabinfo).  To
 * make the counts settle: drop dentries and inodes, wait for an RCU grace period (membarrier's
 * global command is synchronize_rcu; callbacks queued earlier on the same CPU run first), then
 * shrink each cache so objects freed into per-CPU slabs stop counting as active.  A cache the
 * kernel does not have is left out; an unreadable slabinfo gives a bare "S".
 */
static const char *const slab_caches[] = {
	"proc_inode_cache", "dentry", "inode_cache", "pid", "pid_namespace", "net_namespace",
	"task_struct", "nsproxy", "mnt_cache", "cred_jar", "files_cache", "signal_cache",
	"sighand_cache", "mm_struct", "uts_namespace", "user_namespace", "proc_dir_entry",
	"kernfs_node_cache", "sock_inode_cache",
};
enum { N_SLAB_CACHES = sizeof slab_caches / sizeof slab_caches[0] };

static void write_small(const char *path, const char *value)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	if (write(fd, value, strlen(value)) < 0) {
		/* best effort: the counts are then only noisier */
	}
	close(fd);
}

/* The active counts of slab_caches (-1: no such cache) from /proc/slabinfo; -1 if unreadable. */
static int read_slab_counts(long long count[N_SLAB_CACHES])
{
	static char info[512 * 1024];
	for (int i = 0; i < N_SLAB_CACHES; i++)
		count[i] = -1;
	int fd = open("/proc/slabinfo", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	size_t len = 0;
	ssize_t n;
	while (len < sizeof info - 1 && (n = read(fd, info + len, sizeof info - 1 - len)) > 0)
		len += n;
	close(fd);
	info[len] = '\0';
	/* Lines: "<name> <active_objs> <num_objs> ..."; the two header lines never match a name. */
	for (char *line = info; line && *line; ) {
		char *next = strchr(line, '\n');
		if (next)
			*next++ = '\0';
		char name[64];
		long long active;
		if (sscanf(line, "%63s %lld", name, &active) == 2) {
			for (int i = 0; i < N_SLAB_CACHES; i++) {
				if (strcmp(name, slab_caches[i]) == 0)
					count[i] = active;
			}
		}
		line = next;
	}
	return 0;
}

/*
 * Frees come in RCU-deferred chains (a pid's free drops its pid namespace's last reference,
 * which frees that by call_rcu again): repeat grace period, shrink and read until two reads
 * agree, at most SLAB_SETTLE_ROUNDS times.  Returns read_slab_counts's result.
 */
enum { SLAB_SETTLE_ROUNDS = 4 };

static int settle_slab_counts(long long count[N_SLAB_CACHES])
{
	char path[96];
	long long last[N_SLAB_CACHES];
	int rc = -1;
	write_small("/proc/sys/vm/drop_caches", "2");
	for (int round = 0; round < SLAB_SETTLE_ROUNDS; round++) {
		syscall(SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0);
		for (int i = 0; i < N_SLAB_CACHES; i++) {
			snprintf(path, sizeof path, "/sys/kernel/slab/%s/shrink", slab_caches[i]);
			write_small(path, "1");
		}
		if (round > 0)
			memcpy(last, count, sizeof last);
		rc = read_slab_counts(count);
		if (rc < 0 || (round > 0 && memcmp(last, count, sizeof last) == 0))
			break;
	}
	return rc;
}

static void slab_counts(struct text *out)
{
	long long count[N_SLAB_CACHES];
	int rc = settle_slab_counts(count);
	text_str(out, "S");
	for (int i = 0; rc == 0 && i < N_SLAB_CACHES; i++) {
		if (count[i] >= 0)
			text_printf(out, " %s=%lld", slab_caches[i], count[i]);
	}
	text_str(out, "\n");
}

/* ---- kernel coverage (targets/coverage): the probe module's counters, reset before a
 * program and read after its teardown; the R payload then ends with a line "K name=hits ...".
 * Only after `C kcov` (the host loaded the probe): without it nothing changes. */
enum { KCOV_CAP = 64 * 1024 };
#define KCOV_DIR "/sys/kernel/debug/procfuzz_kcov"
static int kcov_fd = -1;

/* `kcov`: mounts debugfs, opens the counters; answers "ok" then the names the probe could not
 * resolve on this kernel, one a line, or the errno name. */
static void kcov_enable(struct link *l)
{
	static char reply[KCOV_CAP];
	mkdir("/sys/kernel/debug", 0755);
	if (mount("debugfs", "/sys/kernel/debug", "debugfs", 0, NULL) < 0 && errno != EBUSY) {
		put_errno(reply, errno);
		send_frame(l, 'R', reply, strlen(reply));
		return;
	}
	if (kcov_fd < 0)
		kcov_fd = open(KCOV_DIR "/counts", O_RDWR | O_CLOEXEC);
	if (kcov_fd < 0) {
		put_errno(reply, errno);
		send_frame(l, 'R', reply, strlen(reply));
		return;
	}
	memcpy(reply, "ok\n", 3);
	ssize_t n = read_file(KCOV_DIR "/missing", reply + 3, sizeof reply - 3);
	send_frame(l, 'R', reply, 3 + (n > 0 ? (size_t)n : 0));
}

static void kcov_reset(void)
{
	if (kcov_fd >= 0 && pwrite(kcov_fd, "0", 1, 0) < 0)
		fprintf(stderr, "agent: kcov reset: %s\n", strerror(errno));
}

/* The "K ..." line into out (at most KCOV_CAP bytes), or nothing when coverage is off. */
static void kcov_line(struct text *out)
{
	static char counts[KCOV_CAP - 8];   /* "K ", newline */
	if (kcov_fd < 0)
		return;
	ssize_t n = pread(kcov_fd, counts, sizeof counts, 0);
	text_str(out, "K");
	if (n > 0) {
		text_str(out, " ");
		text_add(out, counts, (size_t)n);
	}
	text_str(out, "\n");
}

/* The results buffer is static: the controller runs one program at a time. */
static void run_program(struct link *l, const char *text, size_t len, int measure_slab)
{
	static struct program prog;
	static struct sandbox sb;
	static char payload[MAX_PAYLOAD], result[RESULT_CAP];
	struct parse_error e;
	if (parse_program(text, len, &prog, &e) < 0) {
		send_error(l, "program: %s", e.msg);
		return;
	}
	kcov_reset();
	long long t0 = now_ns();
	if (start_sandbox(&sb, result) < 0) {
		teardown(&sb);
		send_error(l, "%s", result);
		return;
	}
	struct text out = { payload, 0, sizeof payload, 0 };
	char *lines = payload + 2048 + 64;     /* room for the T and S lines, written last */
	struct text ops = { lines, 0, sizeof payload - 2048 - 64 - KCOV_CAP, 0 };
	long long t1 = now_ns();
	for (int i = 0; i < prog.nops; i++) {
		run_op(&sb, &prog.ops[i], result);
		if (ops.len + strlen(result) + 2 > ops.cap - 16)
			put_errno(result, E2BIG);   /* keeps the frame within 1 MiB */
		text_str(&ops, result);
		text_str(&ops, "\n");
	}
	long long t2 = now_ns();
	if (teardown(&sb) < 0) {
		send_error(l, "teardown: sandbox init %d did not die within 10 s", sb.init);
		return;
	}
	static char kcov_text[KCOV_CAP];
	struct text kcov = { kcov_text, 0, sizeof kcov_text, 0 };
	kcov_line(&kcov);       /* waits for the namespaces' teardown: counted in total_us */
	long long t3 = now_ns();
	static char slab_line[2048];
	struct text slab = { slab_line, 0, sizeof slab_line, 0 };
	if (measure_slab)
		slab_counts(&slab);     /* ~100 ms under TCG: only for frames that ask (L) */
	else
		text_str(&slab, "S\n");
	text_printf(&out, "T %lld %lld\n", elapsed_us(t1, t2), elapsed_us(t0, t3));
	text_str(&out, slab_line);
	memmove(payload + out.len, lines, ops.len);
	memcpy(payload + out.len + ops.len, kcov_text, kcov.len);
	send_frame(l, 'R', payload, out.len + ops.len + kcov.len);
}

/* Files of the guest image the host may name: modules and executables it put there. */
static int image_path_ok(const char *path, size_t len, const char *prefix)
{
	size_t plen = strlen(prefix);
	if (len <= plen || len >= 200 || memcmp(path, prefix, plen) != 0)
		return 0;
	for (size_t i = 0; i < len; i++) {
		if (path[i] <= ' ' || path[i] > '~')
			return 0;
	}
	return memmem(path, len, "/..", 3) == NULL;
}

/* `load <path> [params]`: finit_module of a module in the image (the bug zoo's, or a user's
 * --load-module); answers an R frame "ok" or the errno name (EEXIST: already loaded). */
static void load_module(struct link *l, const char *what, size_t len)
{
	char path[200], params[1024], result[32];
	const char *space = memchr(what, ' ', len);
	size_t plen = space ? (size_t)(space - what) : len;
	size_t rest = space ? len - plen - 1 : 0;
	if (!image_path_ok(what, plen, "/lib/modules/") || rest >= sizeof params ||
	    memchr(what, '\0', len)) {
		send_error(l, "load: bad module path or parameters");
		return;
	}
	memcpy(path, what, plen);
	path[plen] = '\0';
	memcpy(params, what + len - rest, rest);
	params[rest] = '\0';
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	long rc = fd < 0 ? -1 : syscall(SYS_finit_module, fd, params, 0);
	put_status(result, (int)rc);
	if (fd >= 0)
		close(fd);
	send_frame(l, 'R', result, strlen(result));
}

/* `run <timeout s> <path>`: runs an executable of the image as root in the root namespaces
 * (a C reproducer, a debugging tool) and answers "exit N", "signal N" or "timeout", a newline,
 * then its stdout+stderr (the first RUN_OUTPUT_CAP bytes; the rest is read and dropped). */
enum { RUN_OUTPUT_CAP = 64 * 1024 };
static void run_file(struct link *l, const char *what, size_t len)
{
	static char reply[64 + RUN_OUTPUT_CAP];
	char path[200], scratch[4096];
	const char *space = memchr(what, ' ', len);
	long seconds = space ? strtol(what, NULL, 10) : 0;
	size_t plen = space ? len - (size_t)(space - what) - 1 : 0;
	if (seconds <= 0 || seconds > 3600 || !image_path_ok(space + 1, plen, "/")) {
		send_error(l, "run: bad timeout or path");
		return;
	}
	memcpy(path, space + 1, plen);
	path[plen] = '\0';
	int pipefd[2];
	if (pipe2(pipefd, O_CLOEXEC) < 0) {
		send_error(l, "run: pipe: %s", strerror(errno));
		return;
	}
	pid_t child = fork();
	if (child < 0) {
		send_error(l, "run: fork: %s", strerror(errno));
		close(pipefd[0]);
		close(pipefd[1]);
		return;
	}
	if (child == 0) {
		setpgid(0, 0);
		int null = open("/dev/null", O_RDONLY);
		dup2(null, 0);
		dup2(pipefd[1], 1);
		dup2(pipefd[1], 2);
		char *argv[] = { path, NULL }, *envp[] = { "PATH=/bin", NULL };
		execve(path, argv, envp);
		dprintf(2, "execve %s: %s\n", path, strerror(errno));
		_exit(127);
	}
	close(pipefd[1]);
	size_t got = 0;
	long long deadline = now_ns() + seconds * 1000000000LL;
	int timed_out = 0;
	for (;;) {
		long long left_ms = (deadline - now_ns()) / 1000000;
		struct pollfd pfd = { pipefd[0], POLLIN, 0 };
		if (left_ms <= 0 || poll(&pfd, 1, (int)left_ms) == 0) {
			timed_out = 1;
			break;
		}
		size_t room = RUN_OUTPUT_CAP - got;
		ssize_t n = read(pipefd[0], room ? reply + 64 + got : scratch, room ? room : sizeof scratch);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		if (room)
			got += (size_t)n;
	}
	close(pipefd[0]);
	if (timed_out)
		kill(-child, SIGKILL);
	int status = 0;
	while (waitpid(child, &status, 0) < 0 && errno == EINTR)
		;
	char head[64];
	int hlen = timed_out ? snprintf(head, sizeof head, "timeout\n")
		 : WIFEXITED(status) ? snprintf(head, sizeof head, "exit %d\n", WEXITSTATUS(status))
		 : snprintf(head, sizeof head, "signal %d\n", WTERMSIG(status));
	memmove(reply + 64 - hlen, head, (size_t)hlen);
	send_frame(l, 'R', reply + 64 - hlen, (size_t)hlen + got);
}

static void control(struct link *l, const char *what, size_t len)
{
	if (len == 4 && memcmp(what, "hang", 4) == 0) {
		for (;;)
			pause();
	}
	if (len == 5 && memcmp(what, "panic", 5) == 0) {
		int fd = open("/proc/sysrq-trigger", O_WRONLY | O_CLOEXEC);
		if (fd >= 0 && write(fd, "c", 1) == 1)
			return;             /* not reached: the kernel panics */
		send_error(l, "panic: /proc/sysrq-trigger: %s", strerror(errno));
		if (fd >= 0)
			close(fd);
		return;
	}
	if (len > 5 && memcmp(what, "load ", 5) == 0) {
		load_module(l, what + 5, len - 5);
		return;
	}
	if (len > 4 && memcmp(what, "run ", 4) == 0) {
		run_file(l, what + 4, len - 4);
		return;
	}
	if (len == 4 && memcmp(what, "kcov", 4) == 0) {
		kcov_enable(l);
		return;
	}
	send_error(l, "unknown control '%.*s'", (int)(len > 32 ? 32 : len), what);
}

/* Orphans reparented to us (pid 1) are ours to reap, but only between programs. */
static void reap_strays(void)
{
	while (waitpid(-1, NULL, WNOHANG | __WALL) > 0)
		;
}

static void prepare_mount_points(void)
{
	char path[32];
	mkdir("/mnt", 0755);
	for (int i = 1; i <= MAX_HANDLES; i++) {
		snprintf(path, sizeof path, "/mnt/m%d", i);
		mkdir(path, 0755);
	}
}

/* fds 0-2 must exist, so that no channel or device takes their numbers. */
static void ensure_stdio(void)
{
	while (fcntl(0, F_GETFD) < 0 || fcntl(1, F_GETFD) < 0 || fcntl(2, F_GETFD) < 0) {
		int fd = open("/dev/null", O_RDWR);
		if (fd < 0 || fd > 2)
			break;
	}
}

static int open_device(const char *dev, struct link *l)
{
	if (strcmp(dev, "-") == 0) {
		l->in = 0;
		l->out = 1;
		l->stdio = 1;
		return 0;
	}
	int fd;
	/* A port's node may appear a moment after its driver's probe: poll briefly, say it once. */
	for (int tries = 0; (fd = open(dev, O_RDWR | O_NOCTTY | O_CLOEXEC)) < 0; tries++) {
		if (tries == 100)
			fprintf(stderr, "agent: %s: %s; still retrying\n", dev, strerror(errno));
		usleep(10000);
	}
	struct termios tio;
	if (isatty(fd) && tcgetattr(fd, &tio) == 0) {
		cfmakeraw(&tio);
		tcsetattr(fd, TCSANOW, &tio);
	}
	l->in = l->out = fd;
	return 0;
}

static int serve(const char *dev)
{
	static unsigned char buf[8 + MAX_PAYLOAD];
	struct link l = { .buf = buf, .cap = sizeof buf };
	ssize_t n = readlink("/proc/self/exe", self_exe, sizeof self_exe - 1);
	if (n > 0)
		self_exe[n] = '\0';
	ensure_stdio();
	open_device(dev, &l);
	prepare_mount_points();
	if (chdir("/") < 0)
		fprintf(stderr, "agent: chdir /: %s\n", strerror(errno));
	send_hello_frame(&l);
	for (;;) {
		char type;
		uint32_t len;
		if (next_frame(&l, &type, &len) < 0)
			return 0;
		const char *payload = (const char *)l.buf + 8;
		if (type == 'H')
			send_hello_frame(&l);
		else if (type == 'P' || type == 'L')
			run_program(&l, payload, len, type == 'L');
		else
			control(&l, payload, len);
		consume(&l, 8 + len);
		reap_strays();
	}
}

/* `agent parse`: the program on stdin is accepted (`ok`) or not (the E frame's text). */
static int parse_stdin(void)
{
	static char text[MAX_TEXT + 2];
	static struct program prog;
	struct parse_error e;
	size_t len = 0;
	ssize_t n;
	while (len < sizeof text && (n = read(0, text + len, sizeof text - len)) > 0)
		len += n;
	if (parse_program(text, len, &prog, &e) < 0) {
		printf("program: %s\n", e.msg);
		return 1;
	}
	printf("ok\n");
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "serve") == 0)
		return serve(argv[2]);
	if (argc == 3 && strcmp(argv[1], "actor") == 0)
		return actor_main(argv[0], argv[2]);
	if (argc == 2 && strcmp(argv[1], "parse") == 0)
		return parse_stdin();
	fprintf(stderr, "usage: agent serve <device>|-\n       agent actor <fd>\n       agent parse\n");
	return 2;
}
