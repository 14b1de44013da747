g
!reviews.default.svc.cluster.localdefault"øF*5
default*
&reviews.default.svc.cluster.local:9080d"š
&reviews.default.svc.cluster.local:9080!reviews.default.svc.cluster.local*7
	127.0.0.1‰•
versionv1 2ns/default/sa/default*7
	127.0.0.1Š•
versionv1 2ns/default/sa/default*7
	127.0.0.1‹•
versionv1 2ns/default/sa/default2"
d€Êµî
0
"(2