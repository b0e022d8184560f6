/* SPDX-License-Identifier: MIT */

/* pins lists the pins with the command name of each holder; pin holds a pin while a command runs, as
 * systemd-inhibit holds an inhibitor lock. A pin is a lease on its fd (dbus/org.imgcache.Manager.xml,
 * PinImage): it lasts while a copy of the fd is open, whatever happens to the bus connection. */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#include "ctl-bus.h"
#include "ctl-output.h"
#include "ctl-pins.h"
#include "ctl-util.h"
#include "util.h"

/* Longer than the kernel's comm (16 bytes with the NUL), so a longer one would show. */
#define COMM_MAX 64

/* The command name of pid from /proc/PID/comm, or NULL when it cannot be read (the process is gone, or
 * belongs to another user under hidepid=). Bytes outside printable ASCII become '?': the name is set by
 * the process itself and goes to a terminal and into JSON. */
static const char *pid_comm(uint32_t pid, char *buf, size_t n) {
        _cleanup_(fclosep) FILE *f = NULL;
        char path[64];

        if (pid == 0)
                return NULL;
        snprintf(path, sizeof path, "/proc/%" PRIu32 "/comm", pid);
        f = fopen(path, "re");
        if (!f || !fgets(buf, (int) n, f))
                return NULL;
        buf[strcspn(buf, "\n")] = '\0';
        for (char *p = buf; *p; p++)
                if (*p < 0x20 || *p > 0x7e)
                        *p = '?';
        return buf;
}

static int read_pin_row(sd_bus_message *reply, Table *t, json_t *json, void *userdata) {
        const bool *local = userdata;
        const char *id, *why, *comm;
        char buf[COMM_MAX];
        uint32_t pid;
        int r;

        r = sd_bus_message_read(reply, "(sus)", &id, &pid, &why);
        if (r <= 0)
                return r < 0 ? log_parse_error(r) : 0;

        /* The pid is the daemon's: only on this host is /proc the same. */
        comm = *local ? pid_comm(pid, buf, sizeof buf) : NULL;

        if (json)
                return json_array_append_new(json, json_pack("{s:s, s:I, s:s?, s:s}", "id", id,
                                                             "pid", (json_int_t) pid, "command", comm,
                                                             "why", why)) < 0 ? log_oom() : 1;

        if (table_add_cell(t, id) < 0 ||
            (pid > 0 ? table_add_cellf(t, "%" PRIu32, pid) : table_add_cell(t, NULL)) < 0 ||
            table_add_cell(t, comm) < 0 ||
            table_add_cell(t, why) < 0)
                return log_oom();
        return 1;
}

int verb_pins(int argc, char *argv[], Context *c) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_(table_freep) Table *t = NULL;
        bool local = arg_transport == TRANSPORT_LOCAL;
        sd_bus *bus;
        int r;

        r = acquire_bus(c, &bus);
        if (r < 0)
                return r;

        r = call_manager(bus, "ListPins", 0, &error, &reply, NULL);
        if (r < 0)
                return log_call_error(r, &error, "ListPins", "list pins");

        r = table_new(&t, "IMAGE", "PID", "COMMAND", "WHY", NULL);
        if (r < 0)
                return log_oom();
        (void) table_set_align(t, 1, TABLE_ALIGN_RIGHT);

        return print_reply_listing(reply, "(sus)", t, read_pin_row, &local, "No images pinned.", "pin", "pins");
}

/* ---- pin ID -- CMD... ---------------------------------------------------------------------------- */

/* PinImage; *ret_fd is our own copy of the lease, close-on-exec. */
static int pin_image(sd_bus *bus, const char *id, const char *why, int *ret_fd) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        int fd, r;

        r = call_manager(bus, "PinImage", 0, &error, &reply, "ss", id, why);
        if (r < 0)
                return log_call_error(r, &error, "PinImage", "pin image %s", id);

        r = sd_bus_message_read(reply, "h", &fd);
        if (r < 0)
                return log_parse_error(r);
        /* The message owns fd and closes it with the message. */
        *ret_fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
        if (*ret_fd < 0)
                return log_error_errno(errno, "Failed to duplicate the pin's file descriptor: %m");
        return 0;
}

/* Without --why=, the command's name, when it is short plain text (the daemon takes at most 256 bytes of
 * valid UTF-8, and an argument need be neither). */
static const char *default_why(const char *command) {
        if (strlen(command) > 128)
                return "imgcachectl pin";
        for (const char *p = command; *p; p++)
                if (*p < 0x20 || *p > 0x7e)
                        return "imgcachectl pin";
        return command;
}

/* The shell's convention for the status of a command killed by a signal. */
static int exit_status_of(int wstatus) {
        if (WIFEXITED(wstatus))
                return WEXITSTATUS(wstatus);
        return 128 + WTERMSIG(wstatus);
}

/* Runs argv and waits for it, as system(3) does: SIGINT and SIGQUIT are ignored here meanwhile, so that
 * Ctrl-C reaches the command and the pin is held until the command has exited. The child gets them back
 * before exec (an ignored signal stays ignored across exec). Returns the exit status (>= 0), or a negative
 * errno, logged. */
static int run_command(char **argv) {
        struct sigaction ignore = { .sa_handler = SIG_IGN }, old_int, old_quit;
        int wstatus = 0, r = 0;
        pid_t pid;

        fflush(stdout);
        fflush(stderr);
        (void) sigaction(SIGINT, &ignore, &old_int);
        (void) sigaction(SIGQUIT, &ignore, &old_quit);

        pid = fork();
        if (pid == 0) {
                (void) sigaction(SIGINT, &old_int, NULL);
                (void) sigaction(SIGQUIT, &old_quit, NULL);
                execvp(argv[0], argv);
                int e = errno;
                log_error_errno(e, "Failed to run %s: %m", argv[0]);
                _exit(e == ENOENT ? 127 : 126); /* the shell's codes for "not found" and "cannot run" */
        }
        if (pid < 0)
                r = log_error_errno(errno, "Failed to start %s: %m", argv[0]);
        else
                while (waitpid(pid, &wstatus, 0) < 0)
                        if (errno != EINTR) {
                                r = log_error_errno(errno, "Failed to wait for %s: %m", argv[0]);
                                break;
                        }

        (void) sigaction(SIGINT, &old_int, NULL);
        (void) sigaction(SIGQUIT, &old_quit, NULL);
        return r < 0 ? r : exit_status_of(wstatus);
}

int verb_pin(int argc, char *argv[], Context *c) {
        _cleanup_(closep) int fd = -EBADF;
        char **command = argv + 2;
        sd_bus *bus;
        int r;

        r = acquire_bus_for_images(c, 2, argv, &bus);
        if (r < 0)
                return r;

        r = pin_image(bus, argv[1], arg_why ?: default_why(command[0]), &fd);
        if (r < 0)
                return r;

        /* The fd is the lease: the bus connection is not needed while the command runs, however long that
         * is, nor the polkit agent on the terminal the command may want. The command does not inherit the
         * fd (close-on-exec), so the pin ends when the command does, not when the last of its children
         * that might have kept a copy does, and ListPins names this process as the holder truthfully. */
        polkit_agent_close();
        c->bus = sd_bus_flush_close_unref(c->bus);

        r = run_command(command);
        fd = safe_close(fd); /* the pin ends here, before anything else is reported */
        if (r < 0)
                return r;
        c->exit_status = r;
        return 0;
}
