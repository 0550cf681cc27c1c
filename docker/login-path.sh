# Login shells (`ray up` runs its commands through `bash --login`, KubeRay with
# ENABLE_LOGIN_SHELL=true through `bash -lc`) read /etc/profile, which on Debian-based images
# such as python:3.11-slim resets PATH and so drops the virtual environment that holds `ray`
# and `study`. /etc/profile then reads this file: the venv goes back in front.
case ":${PATH}:" in
  *:/opt/venv/bin:*) ;;
  *) PATH="/opt/venv/bin:${PATH}"; export PATH ;;
esac
