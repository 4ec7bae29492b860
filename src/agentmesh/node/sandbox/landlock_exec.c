/* landlock-exec: landlock_exec.py in C, for the hosts with a C compiler (the node builds
 * it at start); same arguments, same exit codes, a millisecond instead of tens.
 *
 *   landlock-exec [--exec PATH]... [--connect PORT]... -- ARGV...
 *
 * Only the files named by --exec (a bare name is looked up on PATH), the interpreters they
 * need (ELF PT_INTERP, `#!`) and everything beneath a named directory may be executed;
 * with --connect, TCP connect() only to those ports and bind() to none. 126: the ruleset
 * cannot be applied; 127: the program cannot be executed.
 */
#define _GNU_SOURCE
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

/* The kernel ABI, spelled out: distribution headers lag behind the kernels (no network
 * rules in Debian 12's). Numbers from the generic syscall table every architecture uses. */
#define LL_CREATE_RULESET 444
#define LL_ADD_RULE 445
#define LL_RESTRICT_SELF 446
#define LL_CREATE_RULESET_VERSION 1U
#define LL_ACCESS_FS_EXECUTE 1ULL
#define LL_ACCESS_NET_BIND_TCP 1ULL
#define LL_ACCESS_NET_CONNECT_TCP 2ULL
#define LL_RULE_PATH_BENEATH 1
#define LL_RULE_NET_PORT 2

struct ll_ruleset_attr { uint64_t handled_access_fs, handled_access_net; };
struct ll_path_beneath_attr { uint64_t allowed_access; int32_t parent_fd; } __attribute__((packed));
struct ll_net_port_attr { uint64_t allowed_access, port; };

#define MAX_PATHS 1024

static char *paths[MAX_PATHS];
static int npaths;

static void fail(int code, const char *what, const char *detail) {
    fprintf(stderr, "agentmesh sandbox: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
    _exit(code);
}

static char *which(const char *name) {
    if (strchr(name, '/')) return strdup(name);
    const char *path = getenv("PATH");
    if (!path) path = "/usr/bin:/bin";
    char *copy = strdup(path), *save = NULL;
    for (char *dir = strtok_r(copy, ":", &save); dir; dir = strtok_r(NULL, ":", &save)) {
        char candidate[4096];
        struct stat st;
        snprintf(candidate, sizeof candidate, "%s/%s", *dir ? dir : ".", name);
        if (stat(candidate, &st) == 0 && S_ISREG(st.st_mode) && access(candidate, X_OK) == 0) {
            free(copy);
            return strdup(candidate);
        }
    }
    free(copy);
    return NULL;
}

/* The interpreter the kernel also executes to run `path`, or NULL. */
static char *interpreter(const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return NULL;
    char head[4096];
    ssize_t n = read(fd, head, sizeof head - 1);
    char *found = NULL;
    if (n > 2 && head[0] == '#' && head[1] == '!') {
        head[n] = 0;
        char *start = head + 2;
        while (*start == ' ' || *start == '\t') start++;
        size_t len = strcspn(start, " \t\n");
        if (len) found = strndup(start, len);
    } else if (n >= (ssize_t)sizeof(Elf64_Ehdr) && memcmp(head, ELFMAG, SELFMAG) == 0 &&
               head[EI_CLASS] == ELFCLASS64) {
        Elf64_Ehdr *ehdr = (Elf64_Ehdr *)head;
        for (int i = 0; i < ehdr->e_phnum && !found; i++) {
            Elf64_Phdr phdr;
            off_t at = ehdr->e_phoff + (off_t)i * ehdr->e_phentsize;
            if (pread(fd, &phdr, sizeof phdr, at) != sizeof phdr) break;
            if (phdr.p_type == PT_INTERP && phdr.p_filesz < 4096) {
                char *interp = calloc(1, phdr.p_filesz + 1);
                if (pread(fd, interp, phdr.p_filesz, phdr.p_offset) == (ssize_t)phdr.p_filesz)
                    found = interp;
                else
                    free(interp);
            }
        }
    }
    close(fd);
    return found;
}

static void add(const char *name) {
    char *resolved = which(name);
    if (!resolved) return;
    for (int i = 0; i < npaths; i++)
        if (strcmp(paths[i], resolved) == 0) { free(resolved); return; }
    if (npaths == MAX_PATHS) fail(126, "too many programs", NULL);
    paths[npaths++] = resolved;
    char *interp = interpreter(resolved);
    if (interp) { add(interp); free(interp); }
}

int main(int argc, char **argv) {
    long ports[64];
    int nports = 0, limit_network = 0, i = 1;
    for (; i < argc && strcmp(argv[i], "--") != 0; i += 2) {
        if (i + 1 >= argc) fail(126, "missing value for", argv[i]);
        if (strcmp(argv[i], "--exec") == 0) add(argv[i + 1]);
        else if (strcmp(argv[i], "--connect") == 0 && nports < 64) {
            limit_network = 1;
            ports[nports++] = strtol(argv[i + 1], NULL, 10);
        } else fail(126, "unknown option", argv[i]);
    }
    if (i + 1 >= argc) fail(126, "no program given", NULL);
    char **command = argv + i + 1;

    long abi = syscall(LL_CREATE_RULESET, NULL, 0, LL_CREATE_RULESET_VERSION);
    if (abi < 1 || (limit_network && abi < 4)) fail(126, "Landlock cannot enforce this task's limits", NULL);
    struct ll_ruleset_attr attr = {.handled_access_fs = LL_ACCESS_FS_EXECUTE};
    size_t size = 8;
    if (limit_network) {
        attr.handled_access_net = LL_ACCESS_NET_BIND_TCP | LL_ACCESS_NET_CONNECT_TCP;
        size = 16;
    }
    int ruleset = syscall(LL_CREATE_RULESET, &attr, size, 0);
    if (ruleset < 0) fail(126, "landlock_create_ruleset failed", strerror(errno));
    for (int p = 0; p < npaths; p++) {
        int fd = open(paths[p], O_PATH | O_CLOEXEC);
        if (fd < 0) continue; /* a program this host lacks cannot be executed anyway */
        struct ll_path_beneath_attr rule = {
            .allowed_access = LL_ACCESS_FS_EXECUTE, .parent_fd = fd};
        if (syscall(LL_ADD_RULE, ruleset, LL_RULE_PATH_BENEATH, &rule, 0))
            fail(126, "allowing a program failed", paths[p]);
        close(fd);
    }
    for (int p = 0; p < nports; p++) {
        struct ll_net_port_attr rule = {
            .allowed_access = LL_ACCESS_NET_CONNECT_TCP, .port = (uint64_t)ports[p]};
        if (syscall(LL_ADD_RULE, ruleset, LL_RULE_NET_PORT, &rule, 0))
            fail(126, "allowing a port failed", strerror(errno));
    }
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) fail(126, "prctl(NO_NEW_PRIVS) failed", strerror(errno));
    if (syscall(LL_RESTRICT_SELF, ruleset, 0)) fail(126, "landlock_restrict_self failed", strerror(errno));
    close(ruleset);
    execvp(command[0], command);
    fprintf(stderr, "agentmesh sandbox: %s: %s\n", command[0], strerror(errno));
    return 127;
}
