/* SPDX-License-Identifier: MIT */
#pragma once

/* The verbs about pins: pins (ListPins) and pin (PinImage held while a command runs). */

#include "imgcachectl.h"

int verb_pins(int argc, char *argv[], Context *c);
int verb_pin(int argc, char *argv[], Context *c);
