î
!reviews.default.svc.cluster.localdefault"øF*Q
	reviews.0
end-user
jason-
)reviews.default.svc.cluster.local:9080|v2d*i
	reviews.1-
)reviews.default.svc.cluster.local:9080|v1Z-
)reviews.default.svc.cluster.local:9080|v2
"›
)reviews.default.svc.cluster.local:9080|v1!reviews.default.svc.cluster.localv1*G
	127.0.0.1‰•
appreviews
versionv1 2ns/default/sa/default"›
)reviews.default.svc.cluster.local:9080|v2!reviews.default.svc.cluster.localv2*G
	127.0.0.1Š•
appreviews
versionv2 2ns/default/sa/default