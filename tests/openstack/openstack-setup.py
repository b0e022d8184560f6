#!/usr/bin/python3
# SPDX-License-Identifier: MIT
#
# The test's own state in a freshly bootstrapped Keystone and an empty Glance (with-openstack.sh starts
# both): projects, users and roles, the image service in the catalog, an application credential of the
# service user, and the images. Written against the REST APIs with the standard library only, so that
# the harness needs nothing from the OpenStack client libraries. Prints the environment contract of
# with-openstack.sh as shell assignments on stdout; everything else goes to stderr.
#
# Usage: openstack-setup.py AUTH_URL GLANCE_URL ADMIN_PASSWORD DIR

import json
import os
import shlex
import sys
import urllib.error
import urllib.request

auth_url, glance_url, admin_password, state_dir = sys.argv[1:5]
DOMAIN = {"name": "Default"}
REGION = "RegionOne"


def request(method, url, token=None, body=None, data=None, content_type="application/json"):
    headers = {}
    if token:
        headers["X-Auth-Token"] = token
    if body is not None:
        data = json.dumps(body).encode()
    if data is not None:
        headers["Content-Type"] = content_type
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            text = r.read()
            return r.headers, json.loads(text) if text else None
    except urllib.error.HTTPError as e:
        sys.exit(f"openstack-setup: {method} {url}: HTTP {e.code}: {e.read()[:500]!r}")


def keystone(method, path, token, body=None):
    return request(method, auth_url + path, token, body)[1]


def password_token(user, password, project):
    body = {"auth": {"identity": {"methods": ["password"],
                                  "password": {"user": {"name": user, "domain": DOMAIN, "password": password}}},
                     "scope": {"project": {"name": project, "domain": DOMAIN}}}}
    headers, _ = request("POST", auth_url + "/auth/tokens", body=body)
    return headers["X-Subject-Token"]


admin = password_token("admin", admin_password, "admin")
roles = {r["name"]: r["id"] for r in keystone("GET", "/roles", admin)["roles"]}
env = {}


def project(name):
    p = keystone("POST", "/projects", admin, {"project": {"name": name, "domain_id": "default"}})["project"]
    return p["id"]


def user(name, project_id, role):
    password = f"{name}-password"
    u = keystone("POST", "/users", admin, {"user": {"name": name, "password": password, "domain_id": "default",
                                                   "default_project_id": project_id}})["user"]
    keystone("PUT", f"/projects/{project_id}/users/{u['id']}/roles/{roles[role]}", admin)
    return u["id"], password


# alice and bob are members of two projects (each sees only its own private images); imgcache is the
# daemon's service user, glance is Glance's own (keystonemiddleware validates tokens with it). Both
# service users are admin in the service project: Glance's default policies let only admin read another
# project's private image, which the daemon's fills do.
users = {"ALICE": ("alice", "alpha", "member"), "BOB": ("bob", "beta", "member"),
         "SERVICE": ("imgcache", "service", "admin"), "GLANCE": ("glance", "service", "admin")}
projects = {}
for key, (name, project_name, role) in users.items():
    if project_name not in projects:
        projects[project_name] = project(project_name)
    user_id, password = user(name, projects[project_name], role)
    env.update({f"{key}_USER": name, f"{key}_USER_ID": user_id, f"{key}_PASSWORD": password,
                f"{key}_PROJECT": project_name, f"{key}_PROJECT_ID": projects[project_name]})
env.update({"ADMIN_USER": "admin", "ADMIN_PASSWORD": admin_password, "ADMIN_PROJECT": "admin"})

# The image service in the catalog, so that a client (and the daemon without URL=) finds Glance there.
service = keystone("POST", "/services", admin, {"service": {"type": "image", "name": "glance"}})["service"]
for interface in ("public", "internal", "admin"):
    keystone("POST", "/endpoints", admin, {"endpoint": {"service_id": service["id"], "interface": interface,
                                                        "url": glance_url, "region_id": REGION}})

# The daemon's application credential, created by its user as any operator would.
service_token = password_token("imgcache", env["SERVICE_PASSWORD"], "service")
cred = keystone("POST", f"/users/{env['SERVICE_USER_ID']}/application_credentials", service_token,
                {"application_credential": {"name": "imgcache"}})["application_credential"]
env.update({"APP_CRED_ID": cred["id"], "APP_CRED_SECRET": cred["secret"]})
credentials_file = os.path.join(state_dir, "imgcache-credentials.conf")
fd = os.open(credentials_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
with os.fdopen(fd, "w") as f:
    f.write(f"application_credential_id = {cred['id']}\napplication_credential_secret = {cred['secret']}\n")
env["CREDENTIALS_FILE"] = credentials_file

alice = password_token("alice", env["ALICE_PASSWORD"], "alpha")
bob = password_token("bob", env["BOB_PASSWORD"], "beta")
env.update({"ALICE_TOKEN": alice, "BOB_TOKEN": bob})


# Images with pseudo-random content (a different size each, not a multiple of any block size).
def image(key, token, name, size, visibility):
    path = os.path.join(state_dir, f"{name}.img")
    with open(path, "wb") as f:
        f.write(os.urandom(size))
    img = request("POST", glance_url + "/v2/images", token,
                  {"name": name, "disk_format": "raw", "container_format": "bare", "visibility": visibility})[1]
    with open(path, "rb") as f:
        request("PUT", f"{glance_url}/v2/images/{img['id']}/file", token, data=f.read(),
                content_type="application/octet-stream")
    status = request("GET", f"{glance_url}/v2/images/{img['id']}", token)[1]["status"]
    if status != "active":
        sys.exit(f"openstack-setup: image {name} is {status} after its upload")
    env.update({f"IMAGE_{key}": img["id"], f"IMAGE_{key}_FILE": path})
    return img["id"]


image("PRIVATE", alice, "alpha-private", 3 * 1024 * 1024 + 17, "private")
image("PUBLIC", admin, "public", 1024 * 1024 + 5, "public")
deactivated = image("DEACTIVATED", alice, "alpha-deactivated", 256 * 1024 + 3, "private")
request("POST", f"{glance_url}/v2/images/{deactivated}/actions/deactivate", alice)

# clouds.yaml for OpenStack's own clients (openstacksdk, keystoneauth), one cloud per user.
clouds = os.path.join(state_dir, "clouds.yaml")
with open(clouds, "w") as f:
    f.write("clouds:\n")
    for key in ("ALICE", "BOB", "SERVICE", "ADMIN"):
        f.write(f"  {env[key + '_USER']}:\n    region_name: {REGION}\n    auth:\n      auth_url: {auth_url}\n"
                f"      username: {env[key + '_USER']}\n      password: {env[key + '_PASSWORD']}\n"
                f"      project_name: {env[key + '_PROJECT']}\n"
                f"      user_domain_name: Default\n      project_domain_name: Default\n")
os.chmod(clouds, 0o600)
env["CLOUDS_YAML"] = clouds

for k, v in sorted(env.items()):
    print(f"export IMGCACHE_OS_{k}={shlex.quote(v)}")
