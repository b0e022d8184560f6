/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>

#include <systemd/sd-bus.h>

/* Asynchronous polkit checks for bus calls, with public sd-bus API only.
 *
 * A handler asks polkit_verify_async() before touching any state. For a caller with euid 0 it answers
 * 1 at once. Otherwise, the first time it sends CheckAuthorization for the caller's bus name (subject
 * "system-bus-name", the image id as detail "imgcache.image-id", interactive when the call allows
 * interactive authorization), remembers the call in the registry and returns 0: the handler then
 * returns 1 without replying. When polkit answers, the verdict is stored with the query and the original
 * message is rewound and put back into the bus's read queue, so the handler runs again from the start;
 * this time polkit_verify_async() finds the query and returns the verdict: 1 allowed, or a negative
 * errno with the error set: InteractiveAuthorizationRequired when polkit wants to authenticate the user
 * and the call did not allow interaction (the caller may retry allowing it), AccessDenied when it was
 * refused (also after an allowed interaction that could not happen or failed), or polkit's own error.
 * The query is freed by an idle-priority defer source once that second dispatch is over. A verdict is
 * only used for the same action and image id it was asked for. */

typedef struct PolkitRegistry PolkitRegistry;

int polkit_registry_new(PolkitRegistry **ret);
PolkitRegistry *polkit_registry_free(PolkitRegistry *r);

/* Queries sent or answered but not yet consumed. */
unsigned polkit_registry_pending(const PolkitRegistry *r);

int polkit_verify_async(PolkitRegistry *r, sd_bus_message *message, const char *action,
                        const char *image_id, sd_bus_error *error);
