/* SPDX-License-Identifier: MIT */

/* The pure half of the Keystone client: what the credentials file says, what we send, what the token
 * response means. Nothing here does I/O but keystone_credentials_load(). */

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "keystone.h"

#define CREDENTIALS_MAX (64U * 1024U)

static void wipe_free(char **p) {
        if (*p)
                explicit_bzero(*p, strlen(*p));
        free(*p);
        *p = NULL;
}

void keystone_credentials_done(KeystoneCredentials *c) {
        wipe_free(&c->application_credential_id);
        wipe_free(&c->application_credential_secret);
        wipe_free(&c->username);
        wipe_free(&c->password);
        wipe_free(&c->user_domain_name);
        wipe_free(&c->project_name);
        wipe_free(&c->project_domain_name);
}

static char **credentials_field(KeystoneCredentials *c, const char *key) {
        static const struct {
                const char *key;
                size_t offset;
        } fields[] = {
                { "application_credential_id", offsetof(KeystoneCredentials, application_credential_id) },
                { "application_credential_secret", offsetof(KeystoneCredentials, application_credential_secret) },
                { "username", offsetof(KeystoneCredentials, username) },
                { "password", offsetof(KeystoneCredentials, password) },
                { "user_domain_name", offsetof(KeystoneCredentials, user_domain_name) },
                { "project_name", offsetof(KeystoneCredentials, project_name) },
                { "project_domain_name", offsetof(KeystoneCredentials, project_domain_name) },
        };
        for (size_t i = 0; i < ELEMENTSOF(fields); i++)
                if (streq(fields[i].key, key))
                        return (char **) ((uint8_t *) c + fields[i].offset);
        return NULL;
}

static char *strip(char *s) {
        while (*s == ' ' || *s == '\t')
                s++;
        size_t n = strlen(s);
        while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r'))
                s[--n] = 0;
        return s;
}

/* One "key = value" line; values are never quoted in messages (they may be secrets). */
static int credentials_line(KeystoneCredentials *c, char *line, unsigned n, char **ret_error) {
        char *eq = strchr(line, '=');
        if (!eq) {
                set_error_message(ret_error, "line %u: expected key = value", n);
                return -EINVAL;
        }
        *eq = 0;
        const char *key = strip(line), *value = strip(eq + 1);
        char **field = credentials_field(c, key);
        if (!field) {
                set_error_message(ret_error, "line %u: unknown key '%.64s'", n, key);
                return -EINVAL;
        }
        if (*field || !*value) {
                set_error_message(ret_error, "line %u: %s %s", n, key, *field ? "given twice" : "is empty");
                return -EINVAL;
        }
        *field = strdup(value);
        return *field ? 0 : -ENOMEM;
}

static int credentials_check(KeystoneCredentials *c, char **ret_error) {
        bool app = c->application_credential_id || c->application_credential_secret;
        bool user = c->username || c->password || c->project_name || c->user_domain_name || c->project_domain_name;

        if (app && user)
                set_error_message(ret_error, "holds both an application credential and a user's password; give one");
        else if (app && !(c->application_credential_id && c->application_credential_secret))
                set_error_message(ret_error, "needs both application_credential_id and application_credential_secret");
        else if (user && !(c->username && c->password && c->project_name))
                set_error_message(ret_error, "needs username, password and project_name");
        else if (!app && !user)
                set_error_message(ret_error, "holds no credentials (application_credential_id and "
                                  "application_credential_secret, or username, password and project_name)");
        else {
                if (user && !c->user_domain_name && !(c->user_domain_name = strdup("Default")))
                        return -ENOMEM;
                if (user && !c->project_domain_name && !(c->project_domain_name = strdup("Default")))
                        return -ENOMEM;
                return 0;
        }
        return -EINVAL;
}

int keystone_credentials_parse(const char *text, KeystoneCredentials *ret, char **ret_error) {
        KeystoneCredentials c = {};
        char *copy = strdup(text), *save = NULL;
        unsigned n = 0;
        int r = copy ? 0 : -ENOMEM;

        /* strtok_r would skip empty lines and so miscount them; walk the lines by hand. */
        for (char *line = copy; r >= 0 && line; line = save) {
                save = strchr(line, '\n');
                if (save)
                        *save++ = 0;
                n++;
                char *l = strip(line);
                if (*l && *l != '#' && *l != ';')
                        r = credentials_line(&c, l, n, ret_error);
        }
        if (copy) {
                explicit_bzero(copy, strlen(text));
                free(copy);
        }
        if (r >= 0)
                r = credentials_check(&c, ret_error);
        if (r < 0) {
                keystone_credentials_done(&c);
                return r;
        }
        *ret = c;
        return 0;
}

int keystone_credentials_load(const char *path, KeystoneCredentials *ret, char **ret_error) {
        _cleanup_(closep) int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        _cleanup_(freep) char *why = NULL;
        char buf[CREDENTIALS_MAX + 1];
        struct stat st;
        ssize_t n;
        int r;

        if (fd < 0 || fstat(fd, &st) < 0) {
                r = -errno;
                set_error_message(ret_error, "Cannot read CredentialsFile=%s: %s", path, strerror(-r));
                return r;
        }
        if (!S_ISREG(st.st_mode)) {
                set_error_message(ret_error, "CredentialsFile=%s is not a regular file", path);
                return -EINVAL;
        }
        if (st.st_mode & 0077) {
                set_error_message(ret_error, "CredentialsFile=%s is accessible to others (mode %04o); refusing to use "
                                  "it: make it readable by its owner only (chmod 0600)", path,
                                  (unsigned) (st.st_mode & 07777));
                return -EPERM;
        }
        n = read(fd, buf, sizeof(buf));
        if (n < 0 || (size_t) n > CREDENTIALS_MAX) {
                r = n < 0 ? -errno : -EFBIG;
                set_error_message(ret_error, "Cannot read CredentialsFile=%s: %s", path, strerror(-r));
                return r;
        }
        buf[n] = 0;
        r = keystone_credentials_parse(buf, ret, &why);
        explicit_bzero(buf, (size_t) n);
        if (r < 0)
                set_error_message(ret_error, "CredentialsFile=%s: %s", path, why ?: strerror(-r));
        return r;
}

/* ---- the request ---- */

static json_t *named_in_domain(const char *name, const char *domain) {
        return json_pack("{s:s, s:{s:s}}", "name", name, "domain", "name", domain);
}

static json_t *auth_identity(const KeystoneCredentials *c) {
        if (c->application_credential_id)
                return json_pack("{s:[s], s:{s:s, s:s}}", "methods", "application_credential",
                                 "application_credential", "id", c->application_credential_id,
                                 "secret", c->application_credential_secret);

        json_t *user = named_in_domain(c->username, c->user_domain_name);
        if (!user || json_object_set_new(user, "password", json_string(c->password)) < 0) {
                json_decref(user);
                return NULL;
        }
        return json_pack("{s:[s], s:{s:o}}", "methods", "password", "password", "user", user);
}

int keystone_auth_request_body(const KeystoneCredentials *c, char **ret) {
        json_t *identity = auth_identity(c), *auth;

        if (!identity)
                return -ENOMEM;
        /* An application credential carries its scope; a user names the project. */
        if (c->application_credential_id)
                auth = json_pack("{s:{s:o}}", "auth", "identity", identity);
        else
                auth = json_pack("{s:{s:o, s:{s:o}}}", "auth", "identity", identity, "scope", "project",
                                 named_in_domain(c->project_name, c->project_domain_name));
        if (!auth)
                return -ENOMEM;
        char *text = json_dumps(auth, JSON_COMPACT);
        json_decref(auth); /* holds secrets, but jansson frees without wiping: kept as short-lived as can be */
        if (!text)
                return -ENOMEM;
        *ret = text;
        return 0;
}

/* ---- the response ---- */

void keystone_token_info_done(KeystoneTokenInfo *i) {
        i->image_url = mfree(i->image_url);
}

int keystone_parse_time(const char *s, usec_t *ret) {
        struct tm tm = {};
        const char *p = s ? strptime(s, "%Y-%m-%dT%H:%M:%S", &tm) : NULL;
        usec_t frac = 0, scale = USEC_PER_SEC;

        if (!p)
                return -EINVAL;
        if (*p == '.')
                for (p++; *p >= '0' && *p <= '9'; p++)
                        if (scale > 1) {
                                scale /= 10;
                                frac += (usec_t) (*p - '0') * scale;
                        }
        if (!streq(p, "Z") && !streq(p, "+00:00") && *p)
                return -EINVAL;
        time_t t = timegm(&tm);
        if (t < 0)
                return -ERANGE;
        *ret = (usec_t) t * USEC_PER_SEC + frac;
        return 0;
}

usec_t keystone_refresh_delay(usec_t lifetime) {
        /* 10% of a lifetime is room for a slow Keystone and for clocks that disagree: 6 minutes of an
         * hour's token, a fifth of a second of a test's two-second one (but at most one request a second). */
        return MAX(lifetime / 10 * 9, USEC_PER_SEC);
}

static bool endpoint_matches(json_t *ep, const char *interface, const char *region) {
        const char *i = json_string_value(json_object_get(ep, "interface"));
        const char *rid = json_string_value(json_object_get(ep, "region_id"));
        const char *rname = json_string_value(json_object_get(ep, "region"));
        return streq_ptr(i, interface) && (!region || streq_ptr(rid, region) || streq_ptr(rname, region));
}

/* The URL of the first endpoint of the first "image" service that matches. */
static int catalog_image_url(json_t *catalog, const char *interface, const char *region, char **ret) {
        size_t i, j;
        json_t *svc, *ep;

        json_array_foreach(catalog, i, svc) {
                if (!streq_ptr(json_string_value(json_object_get(svc, "type")), "image"))
                        continue;
                json_array_foreach(json_object_get(svc, "endpoints"), j, ep) {
                        const char *url = json_string_value(json_object_get(ep, "url"));
                        if (!url || !endpoint_matches(ep, interface, region))
                                continue;
                        char *u = strdup(url);
                        if (!u)
                                return -ENOMEM;
                        /* The fetcher appends "/v2/images/…": no trailing slash. */
                        for (size_t n = strlen(u); n > 0 && u[n - 1] == '/'; n--)
                                u[n - 1] = 0;
                        *ret = u;
                        return 0;
                }
        }
        *ret = NULL;
        return 0;
}

int keystone_token_parse(const char *json, size_t size, const char *interface, const char *region,
                         KeystoneTokenInfo *ret, const char **ret_reason) {
        json_t *root = json_loadb(json, size, JSON_REJECT_DUPLICATES, NULL);
        json_t *token = json_object_get(root, "token");
        usec_t expires = 0, issued = 0;
        KeystoneTokenInfo info = {};
        int r = 0;

        if (!json_is_object(token)) {
                *ret_reason = "not a token (no \"token\" object)";
                r = -EBADMSG;
        } else if (keystone_parse_time(json_string_value(json_object_get(token, "expires_at")), &expires) < 0) {
                *ret_reason = "no valid expires_at";
                r = -EBADMSG;
        } else {
                if (keystone_parse_time(json_string_value(json_object_get(token, "issued_at")), &issued) < 0)
                        issued = now_usec(CLOCK_REALTIME); /* then our clock must do */
                info.lifetime = expires > issued ? expires - issued : 0;
                json_t *catalog = json_object_get(token, "catalog");
                if (catalog && !json_is_array(catalog)) {
                        *ret_reason = "catalog is not a list";
                        r = -EBADMSG;
                } else if (catalog)
                        r = catalog_image_url(catalog, interface, region, &info.image_url);
        }
        json_decref(root);
        if (r < 0)
                return r;
        if (info.lifetime == 0) {
                *ret_reason = "the token has expired already";
                return -EBADMSG;
        }
        *ret = info;
        return 0;
}
