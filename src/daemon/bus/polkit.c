/* SPDX-License-Identifier: MIT */
/* Asynchronous polkit checks for bus calls (polkit.h). */

#include <errno.h>
#include <glib.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "polkit.h"
#include "util.h"

#define POLKIT_DETAIL_IMAGE_ID "imgcache.image-id"
#define POLKIT_CHECK_ALLOW_USER_INTERACTION 1u

typedef enum QueryState {
        QUERY_PENDING,
        QUERY_ALLOWED,
        QUERY_DENIED,
        QUERY_ERROR,   /* error holds what to return */
} QueryState;

typedef struct PolkitQuery {
        PolkitRegistry *registry;
        sd_bus_message *request;   /* the call being authorized; the registry's key */
        sd_bus_slot *slot;         /* the pending CheckAuthorization */
        sd_event_source *defer;    /* frees the query after the second dispatch */
        char *action;
        char *image_id;
        bool interactive;          /* the caller allowed interactive authorization */
        QueryState state;
        sd_bus_error error;
} PolkitQuery;

struct PolkitRegistry {
        GHashTable *queries; /* sd_bus_message* → PolkitQuery* */
};

static PolkitQuery *polkit_query_free(PolkitQuery *q) {
        if (!q)
                return NULL;
        if (q->registry)
                g_hash_table_remove(q->registry->queries, q->request);
        sd_bus_slot_unref(q->slot);
        sd_event_source_disable_unref(q->defer);
        sd_bus_message_unref(q->request);
        sd_bus_error_free(&q->error);
        free(q->action);
        free(q->image_id);
        free(q);
        return NULL;
}

int polkit_registry_new(PolkitRegistry **ret) {
        PolkitRegistry *r = calloc(1, sizeof(PolkitRegistry));

        if (!r)
                return -ENOMEM;
        r->queries = g_hash_table_new(g_direct_hash, g_direct_equal);
        *ret = r;
        return 0;
}

PolkitRegistry *polkit_registry_free(PolkitRegistry *r) {
        GHashTableIter it;
        gpointer value;

        if (!r)
                return NULL;
        g_hash_table_iter_init(&it, r->queries);
        while (g_hash_table_iter_next(&it, NULL, &value)) {
                PolkitQuery *q = value;
                q->registry = NULL;
                g_hash_table_iter_remove(&it);
                polkit_query_free(q);
        }
        g_hash_table_destroy(r->queries);
        free(r);
        return NULL;
}

unsigned polkit_registry_pending(const PolkitRegistry *r) {
        return r ? g_hash_table_size(r->queries) : 0;
}

static int on_defer_free(sd_event_source *s, void *userdata) {
        polkit_query_free(userdata);
        return 0;
}

static void query_read_verdict(PolkitQuery *q, sd_bus_message *reply) {
        int authorized, challenge, r;

        if (sd_bus_message_is_method_error(reply, NULL)) {
                const sd_bus_error *e = sd_bus_message_get_error(reply);

                /* No polkit on the bus is a plain denial; anything else is polkit's own answer. */
                if (sd_bus_error_has_names(e, SD_BUS_ERROR_SERVICE_UNKNOWN, SD_BUS_ERROR_NAME_HAS_NO_OWNER)) {
                        log_debug("polkit is not available, denying %s: %s", q->action, e->message);
                        q->state = QUERY_DENIED;
                        return;
                }
                q->state = QUERY_ERROR;
                (void) sd_bus_error_copy(&q->error, e);
                return;
        }

        r = sd_bus_message_enter_container(reply, 'r', "bba{ss}");
        if (r >= 0)
                r = sd_bus_message_read(reply, "bb", &authorized, &challenge);
        if (r < 0) {
                q->state = QUERY_ERROR;
                (void) sd_bus_error_setf(&q->error, SD_BUS_ERROR_ACCESS_DENIED,
                                         "Cannot parse polkit's answer for %s: %s", q->action, strerror(-r));
                return;
        }

        /* A challenge means polkit would ask for a password. If the caller did not allow that, say so,
         * so that it may retry allowing it; if it did, no agent could ask and the answer is no. */
        if (authorized)
                q->state = QUERY_ALLOWED;
        else if (challenge && !q->interactive) {
                q->state = QUERY_ERROR;
                (void) sd_bus_error_setf(&q->error, SD_BUS_ERROR_INTERACTIVE_AUTHORIZATION_REQUIRED,
                                         "Interactive authentication required for %s.", q->action);
        } else
                q->state = QUERY_DENIED;
}

static int on_check_authorization(sd_bus_message *reply, void *userdata, sd_bus_error *ret_error) {
        PolkitQuery *q = userdata;
        sd_bus *bus = sd_bus_message_get_bus(q->request);
        int r;

        q->slot = sd_bus_slot_unref(q->slot);
        query_read_verdict(q, reply);

        /* Dispatch the original call again; the handler finds the verdict. Free the query when the loop
         * is idle, which is after that second dispatch. */
        r = sd_event_add_defer(sd_bus_get_event(bus), &q->defer, on_defer_free, q);
        if (r >= 0)
                r = sd_event_source_set_priority(q->defer, SD_EVENT_PRIORITY_IDLE);
        if (r >= 0)
                r = sd_bus_message_rewind(q->request, true);
        if (r >= 0)
                r = sd_bus_enqueue_for_read(bus, q->request);
        if (r < 0) {
                log_warning_errno(r, "Cannot re-dispatch call after polkit's answer: %m");
                (void) sd_bus_reply_method_errno(q->request, r, NULL);
                polkit_query_free(q);
        }
        return 0;
}

static int query_send(PolkitQuery *q, sd_bus_message *message) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *call = NULL;
        sd_bus *bus = sd_bus_message_get_bus(message);
        const char *sender = sd_bus_message_get_sender(message);
        unsigned flags = 0;
        int r;

        if (!sender)
                return -EBADMSG;
        if (q->interactive)
                flags |= POLKIT_CHECK_ALLOW_USER_INTERACTION;

        r = sd_bus_message_new_method_call(bus, &call, "org.freedesktop.PolicyKit1",
                                           "/org/freedesktop/PolicyKit1/Authority",
                                           "org.freedesktop.PolicyKit1.Authority", "CheckAuthorization");
        if (r < 0)
                return r;
        r = sd_bus_message_append(call, "(sa{sv})s", "system-bus-name", 1, "name", "s", sender, q->action);
        if (r < 0)
                return r;
        if (q->image_id)
                r = sd_bus_message_append(call, "a{ss}", 1, POLKIT_DETAIL_IMAGE_ID, q->image_id);
        else
                r = sd_bus_message_append(call, "a{ss}", 0);
        if (r < 0)
                return r;
        r = sd_bus_message_append(call, "us", flags, "");
        if (r < 0)
                return r;

        /* Interactive authentication may take as long as the user needs. */
        return sd_bus_call_async(bus, &q->slot, call, on_check_authorization, q,
                                 flags ? 300 * USEC_PER_SEC : 0);
}

static int query_verdict(PolkitQuery *q, const char *action, const char *image_id, sd_bus_error *error) {
        switch (q->state) {
        case QUERY_PENDING:
                /* The same call dispatched again before polkit answered: keep waiting. */
                return 0;
        case QUERY_ALLOWED:
                if (!streq(q->action, action) || !streq_ptr(q->image_id, image_id))
                        return sd_bus_error_setf(error, SD_BUS_ERROR_ACCESS_DENIED,
                                                 "Authorization was granted for a different request.");
                return 1;
        case QUERY_DENIED:
                return sd_bus_error_setf(error, SD_BUS_ERROR_ACCESS_DENIED, "Not authorized by polkit (%s).",
                                         q->action);
        case QUERY_ERROR:
                return sd_bus_error_copy(error, &q->error);
        }
        return -EINVAL;
}

static int sender_is_root(sd_bus_message *message) {
        _cleanup_(sd_bus_creds_unrefp) sd_bus_creds *creds = NULL;
        uid_t euid;
        int r;

        r = sd_bus_query_sender_creds(message, SD_BUS_CREDS_EUID, &creds);
        if (r < 0)
                return r;
        /* Only what the bus vouches for counts, not what was read from /proc. */
        if (sd_bus_creds_get_augmented_mask(creds) & SD_BUS_CREDS_EUID)
                return 0;
        r = sd_bus_creds_get_euid(creds, &euid);
        if (r < 0)
                return r;
        return euid == 0;
}

int polkit_verify_async(PolkitRegistry *reg, sd_bus_message *message, const char *action,
                        const char *image_id, sd_bus_error *error) {
        PolkitQuery *q;
        int r;

        q = g_hash_table_lookup(reg->queries, message);
        if (q)
                return query_verdict(q, action, image_id, error);

        r = sender_is_root(message);
        if (r < 0)
                return r;
        if (r > 0)
                return 1;

        q = calloc(1, sizeof(PolkitQuery));
        if (!q)
                return -ENOMEM;
        *q = (PolkitQuery) {
                .request = sd_bus_message_ref(message),
                .action = strdup(action),
                .image_id = image_id ? strdup(image_id) : NULL,
                .interactive = sd_bus_message_get_allow_interactive_authorization(message) > 0,
                .error = SD_BUS_ERROR_NULL,
        };
        if (!q->action || (image_id && !q->image_id)) {
                polkit_query_free(q);
                return -ENOMEM;
        }

        r = query_send(q, message);
        if (r < 0) {
                polkit_query_free(q);
                return r;
        }
        q->registry = reg;
        g_hash_table_insert(reg->queries, message, q);
        return 0;
}
