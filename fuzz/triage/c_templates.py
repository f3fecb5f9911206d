"""The C text of an exported reproducer around the agent code it reuses (fuzz/triage/export_c.py
fills in the program, the op kinds' cases and, for a leak, the caches)."""

PERFORM = """
/* The actor's side of the op kinds this program uses (agent.c perform, trimmed). */
static void perform(struct actor *self, const struct cmd *c, int passfd, char *out, int *answer)
{{
	switch (c->kind) {{
{cases}
	default:
		put_errno(out, EPROTO);
		break;
	}}
	if (passfd >= 0)
		close(passfd);
}}
"""

SETUP = r"""
__attribute__((noreturn))
static void setup_failed(const char *what, const char *why)
{
	printf("procfuzz-repro: cannot set up: %s: %s\n", what, why);
	exit(2);
}

/* A private mount namespace with a tmpfs on /mnt for the program's proc mounts (the agent's
 * /mnt/m1../mnt/m64).  With run_as_agent, this program is first bound over /agent and re-executed
 * from there, so that its tasks' exe and post-exec comm are the agent's, as the model expects. */
static void prepare_namespaces(int run_as_agent, char **argv)
{
	if (!argv[1] || strcmp(argv[1], "as-agent") != 0) {
		if (unshare(CLONE_NEWNS) < 0)
			setup_failed("unshare(CLONE_NEWNS)", strerror(errno));
		if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
			setup_failed("making / private", strerror(errno));
		if (run_as_agent) {
			/* by its path: /proc/self/exe names a mount of the namespace we just left */
			char self[PATH_CAP];
			ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
			if (n < 0)
				setup_failed("/proc/self/exe", strerror(errno));
			self[n] = '\0';
			int fd = open("/agent", O_RDONLY | O_CREAT | O_CLOEXEC, 0755);
			if (fd < 0)
				setup_failed("/agent", strerror(errno));
			close(fd);
			if (mount(self, "/agent", NULL, MS_BIND, NULL) < 0)
				setup_failed("bind mount of this program on /agent", strerror(errno));
			execv("/agent", (char *[]){ "/agent", "as-agent", NULL });
			setup_failed("execv /agent", strerror(errno));
		}
	}
	mkdir("/mnt", 0755);
	if (mount("none", "/mnt", "tmpfs", 0, "mode=0755") < 0)
		setup_failed("tmpfs on /mnt", strerror(errno));
	prepare_mount_points();
}

static void set_up(char **argv)
{
	if (geteuid() != 0) {
		printf("procfuzz-repro: cannot set up: run me as root (namespaces, mounts)\n");
		exit(2);
	}
	prepare_namespaces(RUN_AS_AGENT, argv);
	setvbuf(stdout, NULL, _IOLBF, 0);
}
"""

# A divergence: every result is compared with the model's.
MAIN = SETUP + r"""
/* The model's expected result: alternatives separated by " | ", a trailing '*' accepts any rest
 * (reference/trace.py result_matches). */
static int matches(const char *expected, const char *actual)
{
	for (const char *alt = expected; alt;) {
		const char *bar = strstr(alt, " | ");
		size_t len = bar ? (size_t)(bar - alt) : strlen(alt);
		if (len && alt[len - 1] == '*' ? strncmp(actual, alt, len - 1) == 0
		    : strlen(actual) == len && strncmp(actual, alt, len) == 0)
			return 1;
		alt = bar ? bar + 3 : NULL;
	}
	return 0;
}

int main(int argc, char **argv)
{
	static struct sandbox sb;
	static char result[RESULT_CAP];
	int diverged = 0;
	ACTOR_AFTER_EXEC
	set_up(argv);
	if (start_sandbox(&sb, result) < 0)
		setup_failed("sandbox", result);
	for (int i = 0; i < N_OPS; i++) {
		run_op(&sb, &PROGRAM[i], result);
		if (!matches(EXPECTED[i], result)) {
			printf("procfuzz-repro: op %d `%s`: expected %s, got %s\n", i, OP_TEXT[i], EXPECTED[i], result);
			diverged++;
		}
	}
	if (teardown(&sb) < 0)
		printf("procfuzz-repro: the sandbox init did not die within 10 s\n");
	if (diverged)
		printf("procfuzz-repro: DIVERGES (%d ops)\n", diverged);
	else
		printf("procfuzz-repro: OK\n");
	return diverged ? 1 : 0;
}
"""

# A leak: the program runs 1 + LEAK_RUNS times, each in a fresh sandbox; after each run the
# counts of the slab caches settle as in the agent's leak oracle (settle_slab_counts); a cache
# of the finding leaks by the oracle's rule (fuzz/leaks.py leaking).
MAIN_LEAK = SETUP + r"""
int main(int argc, char **argv)
{
	static struct sandbox sb;
	static char result[RESULT_CAP];
	static long long count[LEAK_RUNS + 1][N_SLAB_CACHES];
	int leaks = 0;
	ACTOR_AFTER_EXEC
	set_up(argv);
	for (int run = 0; run <= LEAK_RUNS; run++) {
		if (start_sandbox(&sb, result) < 0)
			setup_failed("sandbox", result);
		for (int i = 0; i < N_OPS; i++)
			run_op(&sb, &PROGRAM[i], result);
		if (teardown(&sb) < 0)
			setup_failed("teardown", "the sandbox init did not die within 10 s");
		if (settle_slab_counts(count[run]) < 0)
			setup_failed("/proc/slabinfo", strerror(errno));
	}
	for (int k = 0; k < N_LEAKED; k++) {
		int i = 0, grew = 1;
		while (i < N_SLAB_CACHES && strcmp(slab_caches[i], LEAKED[k]) != 0)
			i++;
		if (i == N_SLAB_CACHES || count[0][i] < 0)
			continue;
		printf("procfuzz-repro: %s active objects after each run:", LEAKED[k]);
		for (int run = 0; run <= LEAK_RUNS; run++) {
			printf(" %lld", count[run][i]);
			grew &= run == 0 || count[run][i] > count[run - 1][i];
		}
		/* fuzz/leaks.py leaking: up at every run, and by more than the tolerance in all */
		grew &= count[LEAK_RUNS][i] - count[0][i] > LEAK_TOLERANCE[k];
		printf("%s\n", grew ? " (leaks)" : "");
		leaks += grew;
	}
	if (leaks)
		printf("procfuzz-repro: LEAKS (%d caches)\n", leaks);
	else
		printf("procfuzz-repro: OK\n");
	return leaks ? 1 : 0;
}
"""

ACTOR_AFTER_EXEC = """if (argc == 3 && strcmp(argv[1], "actor") == 0)
		return actor_main(argv[0], argv[2]);     /* a task after the exec op */"""
